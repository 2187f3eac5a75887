"""``descent.ScheduleFreeSGD`` and ``descent.ScheduleFreeAdamW`` (Defazio et al., 2024).

Schedule-free methods keep two sequences: ``z`` (the base optimizer's iterate, in the
state) and the average ``x``; the parameters hold the interpolation ``y`` where the
gradient is taken (*train mode*) or ``x`` (*eval mode*). Call ``optimizer.train()``
before training steps and ``optimizer.eval()`` before evaluating or saving weights for
inference, as the ``schedulefree`` package does. :func:`recalibrate_batchnorm`
recomputes BatchNorm statistics at ``x``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ._validate import check_betas, check_nonneg, check_unit_interval
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin, _master, _rounding, _write_param, comp_key
from ._spec import Declaration, Kernel, Meta, zeros

__all__ = ["ScheduleFreeSGD", "ScheduleFreeAdamW", "recalibrate_batchnorm"]

log = logging.getLogger("descent.optim")


def _copy(p: Tensor, group: Any) -> Tensor:  # noqa: ARG001 - state factory signature
    return p.detach().clone(memory_format=torch.preserve_format)


class _ScheduleFree(RoundingMixin, Optimizer):
    """Modes, the averaging weights and the step guard shared by both schedule-free classes."""

    _beta_key: str = "momentum"
    #: ``z`` is a copy of the weights: with a rounding option it is rounded as the parameters are
    #: (stochastically, or with its own compensation ``z_kahan_comp``), so small updates survive in it too.
    _weight_states = ("z",)

    def _beta(self, group: dict[str, Any]) -> float:
        return float(group["momentum"]) if self._beta_key == "momentum" else float(group["betas"][0])

    def _check_common(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_nonneg("weight_decay", group["weight_decay"])
        warm = group["warmup_steps"]
        if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
            raise ValueError(f"Invalid warmup_steps: {warm!r} (must be an int >= 0)")
        check_nonneg("r", group["r"])
        check_nonneg("weight_lr_power", group["weight_lr_power"])

    @torch.no_grad()
    def eval(self) -> None:
        """Switch the parameters to the average ``x`` (where to evaluate); no-op if already there."""
        for group in self.param_groups:
            if group["train_mode"]:
                beta = self._beta(group)
                for p in group["params"]:
                    if self.state.get(p, {}).get("z") is not None:
                        self._move(group, p, F.schedule_free_to_eval, beta)
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Switch the parameters to ``y`` (where gradients are taken); no-op if already there."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta = self._beta(group)
                for p in group["params"]:
                    if self.state.get(p, {}).get("z") is not None:
                        self._move(group, p, F.schedule_free_to_train, beta)
                group["train_mode"] = True

    def _move(self, group: dict[str, Any], p: Tensor, move: Callable[..., None], beta: float) -> None:
        """Move ``p`` between ``y`` and ``x``; a bf16 ``p`` with a rounding option moves in float32 from
        ``p`` and ``z`` (plus their Kahan compensations) and is rounded as the option says."""
        state = self.state[p]
        z, rounding = state["z"].to(p.device), _rounding(group, p)
        if rounding == "nearest":
            move(p, z, beta=beta)
            return
        w = _master(p, state, rounding)
        move(w, _master(z, state, rounding, comp_key("z")), beta=beta)
        _write_param(p, w, state, rounding)

    @property
    def training(self) -> bool:
        """True in train mode (parameters hold ``y``), False in eval mode (``x``)."""
        return all(bool(g["train_mode"]) for g in self.param_groups)

    def _advance(self, group: dict[str, Any]) -> None:
        lr_k, lr_max, weight_sum, c = F.schedule_free_weight(
            int(group["k"]), lr=float(group["lr"]), warmup_steps=group["warmup_steps"], r=group["r"],
            weight_lr_power=group["weight_lr_power"], lr_max=group["lr_max"], weight_sum=group["weight_sum"])
        group.update(scheduled_lr=lr_k, lr_max=lr_max, weight_sum=weight_sum, ckp1=c, k=int(group["k"]) + 1)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step (see :meth:`descent.Optimizer.step`); raises ``RuntimeError`` in eval mode."""
        bad = [i for i, g in enumerate(self.param_groups) if not g["train_mode"]]
        if bad:
            raise RuntimeError(
                f"{type(self).__name__}.step() called in eval mode (param_groups {bad}): the parameters hold "
                "the average x, not the training point y. Call optimizer.train() before training steps and "
                "optimizer.eval() before evaluation or saving for inference.")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        if self._skip_nonfinite(work):
            return loss
        for group, params, grads, _ in work:
            self._advance(group)
            if params:
                self._step_group(group, params, grads)
        return loss

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("ckp1", 0.0)


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-free SGD: primal averaging with momentum-like interpolation, no lr schedule.

    .. math::
        y_t = (1-\beta) z_t + \beta x_t,\quad z_{t+1} = z_t - \gamma_t \nabla f(y_t),\quad
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1},\quad
        c_{t+1} = \frac{(t+1)^r \gamma_{\max}^p}{\sum_{i \le t} (i+1)^r \gamma_{\max,i}^p}

    Same defaults and state keys (``z``) as the ``schedulefree`` package (1.4), so its
    state_dicts load here. Differences: a new optimizer starts in *train* mode (the
    package starts in eval mode and needs ``.train()`` first); the mode is stored in
    each param group (``train_mode``), so ``state_dict()`` records it and
    ``load_state_dict`` restores it; stepping in eval mode raises ``RuntimeError``.
    A checkpoint saved in train mode holds :math:`y` in the model: load both, then
    ``optimizer.eval()`` gives the eval weights :math:`x`. The default lr is 0.1
    (the package's is 1.0, tuned for ImageNet-scale networks with BatchNorm, which
    diverges on small unnormalized least-squares problems, as in torch's generic
    optimizer tests; pass ``lr=1.0`` for it). On the built-in classifiers 1.0 is the
    better choice (a 200-step sweep: README, the optimizers of 2024), and
    :func:`descent.create_optimizer` / the CLI take it from the per-task-kind lrs.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\gamma` (default 0.1).
        momentum: :math:`\beta`, in (0, 1) (default 0.9).
        warmup_steps: linear lr warm-up length (default 0).
        r: the iterate-weight power :math:`r` (default 0).
        weight_lr_power: the lr power :math:`p` in the averaging weights (default 2).
        weight_decay: :math:`\lambda`, applied at :math:`y` (default 0).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Defazio et al. (2024), "The Road Less Scheduled", NeurIPS 2024.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.ScheduleFreeSGD(model.parameters(), lr=0.5, warmup_steps=10)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
        >>> opt.eval()   # evaluate / save at the average x
        >>> opt.train()  # back to y before the next step
    """

    _beta_key = "momentum"
    declaration = Declaration(
        functional=F.schedule_free_sgd,
        hyper=lambda g: dict(lr=float(g["scheduled_lr"]), momentum=float(g["momentum"]), c=float(g["ckp1"]),
                             weight_decay=g["weight_decay"], maximize=bool(g["maximize"])),
        columns=("z",),
        state={"z": _copy},
        kernels={"fused": Kernel("descent.kernels.modern:schedule_free_sgd", K.numba_cpu, steps=None)},
        meta=Meta("schedulefree-sgd", adaptive=False, state_bytes=4.0, paper="Defazio et al. (2024), arXiv:2405.15682",
                  lr={"classification": 1.0, "language": 1.0, "convex": 0.5, "function": 0.01}),
    )

    def __init__(self, params: Any, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, *,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, backend: str | None = None,
                 skip_nonfinite: bool = False,
                 stochastic_rounding: bool = False, kahan_summation: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0,
                        scheduled_lr=0.0, ckp1=0.0, maximize=maximize, foreach=foreach, fused=fused,
                        backend=backend, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        self._check_common(group)
        check_unit_interval("momentum", group["momentum"])
        if not group["momentum"] > 0:
            raise ValueError(f"Invalid momentum: {group['momentum']} (must be in (0, 1))")


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-free AdamW: the schedule-free averaging on Adam-normalized gradients.

    As :class:`ScheduleFreeSGD` with :math:`\beta = \beta_1` and the step
    :math:`z \leftarrow z - \gamma_t\,(g/(\sqrt{\hat v_t}+\epsilon) + \lambda y)`, where
    :math:`\hat v_t` is Adam's bias-corrected second moment (the group's step count).
    Winner of AlgoPerf's self-tuning track (2024). Same defaults and state keys
    (``z``, ``exp_avg_sq``) as the ``schedulefree`` package (1.4); same differences
    (starts in train mode, mode in the state_dict, ``RuntimeError`` in eval mode).

    Args:
        params: parameters or param group dicts.
        lr: :math:`\gamma` (default 0.0025).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-8).
        warmup_steps: linear lr warm-up length (default 0).
        r: the iterate-weight power :math:`r` (default 0).
        weight_lr_power: the lr power :math:`p` in the averaging weights (default 2).
        weight_decay: :math:`\lambda`, applied at :math:`y` (default 0).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Defazio et al. (2024), "The Road Less Scheduled", NeurIPS 2024.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.ScheduleFreeAdamW(model.parameters(), lr=2.5e-3, warmup_steps=100)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
        >>> opt.eval(); opt.train()
    """

    _beta_key = "betas"
    declaration = Declaration(
        functional=F.schedule_free_adamw,
        hyper=lambda g: dict(step=int(g["k"]), lr=float(g["scheduled_lr"]), beta1=g["betas"][0], beta2=g["betas"][1],
                             eps=g["eps"], c=float(g["ckp1"]), weight_decay=g["weight_decay"],
                             maximize=bool(g["maximize"])),
        columns=("z", "exp_avg_sq"),
        state={"z": _copy, "exp_avg_sq": zeros},
        kernels={"fused": Kernel("descent.kernels.modern:schedule_free_adamw", K.numba_cpu, steps=None)},
        meta=Meta("schedulefree-adamw", adaptive=True, state_bytes=8.0,
                  paper="Defazio et al. (2024), arXiv:2405.15682",
                  lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}),
    )

    def __init__(self, params: Any, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, backend: str | None = None, skip_nonfinite: bool = False,
                 stochastic_rounding: bool = False, kahan_summation: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0,
                        scheduled_lr=0.0, ckp1=0.0, maximize=maximize, foreach=foreach, fused=fused,
                        backend=backend, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        self._check_common(group)
        check_betas(group["betas"])
        if not group["betas"][0] > 0:
            raise ValueError(f"Invalid beta1: {group['betas'][0]} (must be in (0, 1) for schedule-free)")
        check_nonneg("eps", group["eps"])


_BN = torch.nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[Any], optimizer: _ScheduleFree | None = None,
                          *, forward: Callable[[torch.nn.Module, Any], Any] | None = None) -> int:
    """Recompute every BatchNorm's running statistics at the current weights.

    A schedule-free model is evaluated at the average ``x``, but its BatchNorm running
    statistics were collected at the training points ``y``; evaluating with those is the
    accuracy drop reported in schedulefree #11/#48. This resets the statistics and
    re-estimates them as an exact (cumulative) average over ``batches`` in training mode,
    without gradients, as ``torch.optim.swa_utils.update_bn``. With ``optimizer`` the
    weights are first switched to ``x`` (``optimizer.eval()``) and stay there: call
    ``optimizer.train()`` before the next step. The model's ``training`` flags and the
    BatchNorm momenta are restored.

    Args:
        model: the network.
        batches: an iterable of inputs; a tuple/list batch passes its first element.
        optimizer: a schedule-free optimizer to switch to eval mode first (optional).
        forward: ``forward(model, batch)`` to use instead of the default call.

    Returns:
        The number of batches used (0 when the model has no BatchNorm layer).

    Example:
        >>> import torch, descent
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        >>> opt = descent.ScheduleFreeAdamW(net.parameters())
        >>> descent.recalibrate_batchnorm(net, [torch.randn(8, 3) for _ in range(2)], opt)
        2
    """
    if optimizer is not None:
        optimizer.eval()
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms:
        log.info("recalibrate_batchnorm: the model has no BatchNorm layer with running statistics")
        return 0
    momenta = {m: m.momentum for m in norms}
    modes = {m: m.training for m in model.modules()}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for batch in batches:
            if forward is not None:
                forward(model, batch)
            else:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ValueError("Invalid batches: empty (recalibrate_batchnorm needs at least one batch)")
    return seen
