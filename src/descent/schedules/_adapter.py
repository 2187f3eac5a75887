"""Attach closed-form schedules to any optimizer as a real ``torch.optim.lr_scheduler.LRScheduler``."""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from ._base import Schedule, check_count

__all__ = ["Scheduler", "attach"]

log = logging.getLogger("descent.schedules")

ScheduleLike = Callable[[int], float]
ScheduleSpec = Union[ScheduleLike, Sequence[Union[ScheduleLike, None]], Mapping[int, ScheduleLike]]
_SLOTS = {"betas": ("betas", 0), "beta1": ("betas", 0), "beta2": ("betas", 1)}


def _per_group(schedule: ScheduleSpec, n: int) -> list[ScheduleLike | None]:
    if isinstance(schedule, Mapping):
        bad = [k for k in schedule if not isinstance(k, int) or not 0 <= k < n]
        if bad:
            raise ValueError(f"Invalid schedule: group indices {bad} (the optimizer has {n} param groups)")
        return [schedule.get(i) for i in range(n)]
    if isinstance(schedule, (list, tuple)):
        if len(schedule) != n:
            raise ValueError(f"Invalid schedule: {len(schedule)} schedules for {n} param groups")
        return list(schedule)
    if not callable(schedule):
        raise ValueError(f"Invalid schedule: {schedule!r} (must be callable step -> multiplier)")
    return [schedule] * n


def _value(schedule: ScheduleLike, step: int, base: float) -> float:
    if isinstance(schedule, Schedule):
        return schedule.value(step, base)
    out = float(schedule(step))
    return out if getattr(schedule, "absolute", False) else base * out


def _count_steps(ref: weakref.ref) -> Callable[..., None]:
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        sched = ref()
        if sched is not None:
            sched._opt_steps += 1
    return hook


class Scheduler(LRScheduler):
    """A torch ``LRScheduler`` that sets ``hyperparam`` of each group to ``schedule(t)`` (closed form).

    .. math:: v_{g,t} = v_{g,0} \\cdot s_g(t) \\quad (\\text{or } s_g(t) \\text{ for absolute schedules})

    ``t`` counts *applied* optimizer steps: when the optimizer skipped its update because
    of non-finite gradients (a descent optimizer with ``skip_nonfinite=True``,
    :class:`descent.NonFiniteGuard`, or :class:`descent.stability.amp.MixedPrecision` whose
    ``GradScaler`` found Inf) the group's ``skipped_steps`` grows and :meth:`step` does
    not advance ``t``, so a warmup is not shortened by bad batches.

    Because values are a function of ``t`` alone, :meth:`state_dict` holds only ``t``,
    the base values and the state of stateful pieces (:class:`ReduceLROnPlateau`), and
    :meth:`load_state_dict` resumes exactly and rewrites the groups' values (no
    ``initial_lr`` / ``last_epoch`` pitfalls: pytorch #29697, #60265).

    Cadence check: with ``unit="step"`` (default) a :meth:`step` that comes after more
    than one optimizer step means the schedule is stepped once per epoch while configured
    in steps (a 1000-step warmup would then last 1000 epochs). descent warns once and
    records the finding in :attr:`cadence` for ``descent``'s doctor. Pass
    ``unit="epoch"`` when per-epoch stepping is intended.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (descent's or torch's).
        schedule: one schedule for every group, a list (one per group, ``None`` = leave
            alone) or a dict ``{group_index: schedule}``. Any callable ``step -> multiplier``.
        hyperparam: the group key to schedule: ``"lr"`` (default), ``"momentum"``,
            ``"weight_decay"``, ``"betas"``/``"beta1"`` (first beta), ``"beta2"``, or any
            other float key.
        unit: ``"step"`` or ``"epoch"`` (what one :meth:`step` call means).
        steps_per_epoch: optimizer steps per epoch, if known (sharpens the cadence message).
        skip_aware: do not advance on skipped optimizer steps (default True).

    Example:
        >>> import torch, descent
        >>> from descent.schedules import Scheduler, WarmupCosine
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
        >>> sched = Scheduler(opt, WarmupCosine(100, warmup=10))
        >>> for _ in range(5):
        ...     opt.step(); sched.step()
        >>> round(opt.param_groups[0]["lr"], 6)
        0.05
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleSpec, hyperparam: str = "lr", *,
                 unit: str = "step", steps_per_epoch: int | None = None, skip_aware: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        if unit not in ("step", "epoch"):
            raise ValueError(f"Invalid unit: {unit!r} (must be 'step' or 'epoch')")
        if steps_per_epoch is not None:
            check_count("steps_per_epoch", steps_per_epoch)
        self.schedules = _per_group(schedule, len(optimizer.param_groups))
        self.hyperparam = hyperparam
        self.unit = unit
        self.steps_per_epoch = steps_per_epoch
        self.skip_aware = bool(skip_aware)
        self.skipped = 0
        self.cadence: dict[str, Any] | None = None
        self._opt_steps = 0
        self._opt_steps_seen = 0
        key, slot = _SLOTS.get(hyperparam, (hyperparam, None))
        for gi, group in enumerate(optimizer.param_groups):
            if self.schedules[gi] is not None and key not in group:
                raise ValueError(f"Invalid hyperparam: {hyperparam!r} (param_groups[{gi}] has no {key!r})")
        self.base_values = [self._read(g) if s is not None else None
                            for g, s in zip(optimizer.param_groups, self.schedules)]
        self._skips_seen = self._skip_counts(optimizer)
        self._hook = optimizer.register_step_post_hook(_count_steps(weakref.ref(self)))
        super().__init__(optimizer, last_epoch=-1)

    # ----------------------------------------------------------- group values
    def _read(self, group: dict[str, Any]) -> float:
        key, slot = _SLOTS.get(self.hyperparam, (self.hyperparam, None))
        if self.hyperparam == "lr" and "initial_lr" in group:
            value = group["initial_lr"]
        else:
            value = group[key] if slot is None else group[key][slot]
        return float(value.item() if isinstance(value, Tensor) else value)

    def _write(self, group: dict[str, Any], value: float) -> None:
        key, slot = _SLOTS.get(self.hyperparam, (self.hyperparam, None))
        if slot is not None:
            old = list(group[key])
            if isinstance(old[slot], Tensor):
                old[slot].fill_(value)
            else:
                old[slot] = value
            group[key] = tuple(old)
        elif isinstance(group[key], Tensor):
            group[key].fill_(value)
        else:
            group[key] = value

    def values_at(self, step: int) -> list[float | None]:
        """The scheduled value of every group at ``step`` (``None`` for unscheduled groups)."""
        return [None if s is None else _value(s, step, b) for s, b in zip(self.schedules, self.base_values)]

    def _apply(self) -> None:
        for group, value in zip(self.optimizer.param_groups, self.values_at(max(self.last_epoch, 0))):
            if value is not None:
                self._write(group, value)
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float | Tensor]:
        """The lrs of the current step (scheduled or not), for torch's API."""
        if self.hyperparam == "lr":
            return [v if v is not None else g["lr"]
                    for v, g in zip(self.values_at(max(self.last_epoch, 0)), self.optimizer.param_groups)]
        return [g["lr"] for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _skip_counts(optimizer: torch.optim.Optimizer) -> list[int]:
        return [int(g.get("skipped_steps", 0)) for g in optimizer.param_groups]

    def _skipped_since(self) -> int:
        now = self._skip_counts(self.optimizer)
        seen = list(self._skips_seen) + [0] * (len(now) - len(self._skips_seen))
        self._skips_seen = now
        return max([a - b for a, b in zip(now, seen)] + [0])

    def step(self, epoch: Any = None) -> None:  # type: ignore[override]
        """Advance one step (unless the optimizer skipped) and write the new values.

        Args:
            epoch: an ``int`` jumps to that step (torch's deprecated ``epoch``, closed form). A
                float or a tensor is a *metric*, as Lightning passes with ``reduce_on_plateau=True``
                (``scheduler.step(metric)``): the schedule advances one step as without it and the
                metric goes to the plateau pieces (:meth:`report`) when it is not the very object
                given last time (Lightning passes the same tensor every step until the next
                validation, which must count as one evaluation, not one per step; a new
                evaluation is a new tensor, even when its value is equal). After
                :meth:`load_state_dict` the first metric given is fed.
        """
        if epoch is not None and not (isinstance(epoch, int) and not isinstance(epoch, bool)):
            self._step(None)
            self._feed(epoch)
            return
        self._step(epoch)

    def _feed(self, metric: Any) -> None:
        # the reference is kept so that a new metric object can never reuse the old one's id
        if metric is not getattr(self, "_last_metric", None):
            self._last_metric = metric
            self.report(float(metric.item() if isinstance(metric, Tensor) else metric))

    def _step(self, epoch: int | None) -> None:
        self._step_count = getattr(self, "_step_count", 0) + 1
        if self._is_initial:
            self.last_epoch = 0
            self._apply()
            return
        opt_steps = self._opt_steps - self._opt_steps_seen
        self._opt_steps_seen = self._opt_steps
        skipped = self._skipped_since()
        if epoch is not None:
            self.last_epoch = int(epoch)
        elif self.skip_aware and skipped > 0 and skipped >= opt_steps:
            self.skipped += 1
            log.info("schedule held at step %d: the optimizer skipped its update", self.last_epoch)
        else:
            self.last_epoch += 1
        if opt_steps > 1 and self.unit == "step" and self.cadence is None:
            self._report_cadence(opt_steps)
        self._apply()

    def _report_cadence(self, opt_steps: int) -> None:
        horizons = [s.horizon for s in self.schedules if isinstance(s, Schedule) and s.horizon]
        span = max(horizons) if horizons else None
        msg = (f"Scheduler.step() was called after {opt_steps} optimizer steps; this schedule is configured in "
               f"steps (unit='step'), so it is being stepped {opt_steps}x too rarely")
        if span:
            msg += f": its {span}-step shape would take {span} calls (~{math.ceil(span * opt_steps)} optimizer steps)"
        if self.steps_per_epoch:
            msg += f"; with steps_per_epoch={self.steps_per_epoch}, call step() after every optimizer step"
        msg += ". Call scheduler.step() once per optimizer step, or pass unit='epoch' if this is intended."
        self.cadence = {"optimizer_steps_per_schedule_step": opt_steps, "horizon": span, "message": msg}
        warnings.warn(msg, UserWarning, stacklevel=3)

    def report(self, metric: Any) -> None:
        """Feed a validation metric to the :class:`ReduceLROnPlateau` pieces active now, then rewrite values."""
        seen: set[int] = set()
        for s in self.schedules:
            if isinstance(s, Schedule):
                leaf = s.active(max(self.last_epoch, 0))
                if getattr(leaf, "stateful", False) and id(leaf) not in seen:
                    seen.add(id(leaf))
                    leaf.step(metric)
        self._apply()

    # ------------------------------------------------------------------ state
    def _stateful(self) -> list[list[dict[str, Any]]]:
        return [[leaf.state_dict() for leaf in s.leaves() if leaf.stateful] if isinstance(s, Schedule) else []
                for s in self.schedules]

    def state_dict(self) -> dict[str, Any]:
        """Step, base values, skip bookkeeping and plateau state; plain Python values only."""
        return {
            "last_epoch": self.last_epoch, "_step_count": self._step_count, "hyperparam": self.hyperparam,
            "base_values": list(self.base_values), "skipped": self.skipped, "_skips_seen": list(self._skips_seen),
            "cadence": self.cadence, "stateful": self._stateful(),
            "_last_lr": [float(v) for v in self._last_lr],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` and write the values of the saved step into the groups."""
        if state_dict.get("hyperparam", self.hyperparam) != self.hyperparam:
            raise ValueError(f"Invalid state_dict: it schedules {state_dict['hyperparam']!r}, "
                             f"this scheduler {self.hyperparam!r}")
        for key in ("last_epoch", "_step_count", "skipped", "cadence"):
            setattr(self, key, state_dict[key])
        self.base_values = list(state_dict["base_values"])
        self._skips_seen = list(state_dict["_skips_seen"])
        self._last_metric = None
        self._opt_steps_seen = self._opt_steps
        for s, states in zip(self.schedules, state_dict["stateful"]):
            if isinstance(s, Schedule):
                for leaf, st in zip([leaf for leaf in s.leaves() if leaf.stateful], states):
                    leaf.load_state_dict(st)
        self._apply()


def attach(optimizer: torch.optim.Optimizer, schedule: ScheduleSpec, hyperparam: str = "lr",
           **kwargs: Any) -> Scheduler:
    """Attach ``schedule`` to ``optimizer`` (shorthand for :class:`Scheduler`).

    Example:
        >>> import torch
        >>> from descent.schedules import OneCycle, attach
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
        >>> cycle = OneCycle(100)
        >>> lr, mom = attach(opt, cycle), attach(opt, cycle.momentum(), "momentum")
    """
    return Scheduler(optimizer, schedule, hyperparam, **kwargs)
