"""The :class:`Schedule` protocol, argument checks shared by schedules, and :func:`join`.

A schedule is a pure, closed-form function of the step count ``t`` (an ``int >= 0``)
that returns a *multiplier of the base value* (``lr_t = base_lr * schedule(t)``), so it
plugs straight into ``torch.optim.lr_scheduler.LambdaLR``. It never reads the current
learning rate: the value at step ``t`` is the same whether you got there by stepping,
by resuming from a checkpoint, or by calling ``schedule(t)`` directly.

A few schedules are *absolute* (``absolute = True``): they return the value itself,
not a multiplier (the momentum cycle of :class:`~descent.schedules.OneCycle`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Schedule", "Join", "join", "check_step", "resolve_warmup"]


def check_step(step: Any) -> int:
    """Return ``step`` as an ``int``; ``ValueError`` unless it is a whole number ``>= 0``."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) and not hasattr(step, "__index__"):
        try:
            step = float(step)  # a 0-d tensor or numpy scalar
        except (TypeError, ValueError):
            raise ValueError(f"Invalid step: {step!r} (must be an integer >= 0)") from None
    value = float(step)
    if math.isnan(value) or value < 0 or value != math.floor(value):
        raise ValueError(f"Invalid step: {step!r} (must be an integer >= 0)")
    return int(value)


def check_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int``; ``ValueError`` unless it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {minimum})")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (must be >= {minimum})")
    return value


def check_ratio(name: str, value: Any, *, low: float = 0.0, high: float = 1.0,
                open_low: bool = False, open_high: bool = False) -> float:
    """Return ``value`` as a float in the interval ``low..high`` (ends open or closed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a number)")
    v = float(value)
    below = v <= low if open_low else v < low
    above = v >= high if open_high else v > high
    if below or above:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"Invalid {name}: {value} (must be in {left}{low}, {high}{right})")
    return v


def resolve_warmup(warmup: Any, total_steps: int | None) -> int:
    """Warmup as steps: an ``int`` is a step count, a ``float`` in ``[0, 1)`` a fraction of ``total_steps``.

    Raises ``ValueError`` for a negative warmup, a fraction without a total, or a warmup
    that is not shorter than ``total_steps``.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        raise ValueError(f"Invalid warmup: {warmup!r} (must be a step count or a fraction in [0, 1))")
    if isinstance(warmup, float):
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"Invalid warmup: {warmup} (a float warmup is a fraction and must be in [0, 1))")
        if total_steps is None:
            raise ValueError(f"Invalid warmup: {warmup} (a fraction needs total_steps)")
        steps = int(round(warmup * total_steps))
    else:
        if warmup < 0:
            raise ValueError(f"Invalid warmup: {warmup} (must be >= 0)")
        steps = warmup
    if total_steps is not None and steps >= total_steps:
        raise ValueError(f"Invalid warmup: {warmup} ({steps} steps; must be shorter than total_steps={total_steps})")
    return steps


class Schedule:
    """Base class: a closed-form ``step -> multiplier`` function (see the module docstring).

    Subclasses implement :meth:`multiplier`. ``horizon`` is the step after which the
    schedule no longer changes on its own (``None`` if it never settles, e.g. an
    exponential decay); the adapter uses it to explain cadence mistakes.
    """

    absolute: bool = False
    stateful: bool = False

    def multiplier(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: Any) -> float:
        return float(self.multiplier(check_step(step)))

    def value(self, step: Any, base: float) -> float:
        """The scheduled value at ``step`` for a group whose base value is ``base``."""
        m = self(step)
        return m if self.absolute else base * m

    @property
    def horizon(self) -> int | None:
        return getattr(self, "total_steps", None)

    def leaves(self) -> Iterator[Schedule]:
        """Every elementary schedule inside this one (itself, unless it is composite)."""
        yield self

    def active(self, step: int) -> Schedule:
        """The elementary schedule that produces the value at ``step``."""
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = object.__hash__


class Join(Schedule):
    """Run ``schedules[i]`` between ``boundaries[i-1]`` and ``boundaries[i]``, each on its own clock.

    .. math::
        m(t) = s_i(t - b_{i-1}), \\qquad b_{i-1} \\le t < b_i, \\quad b_{-1} = 0

    Each piece sees the steps since its own start (as ``optax.join_schedules``), so a
    warmup can be followed by any decay, or by :class:`~descent.schedules.ReduceLROnPlateau`
    (which torch's ``SequentialLR`` cannot chain: pytorch #68978).

    Args:
        schedules: the pieces, in order (``len(boundaries) + 1`` of them).
        boundaries: strictly increasing steps ``> 0`` where the next piece starts.

    Example:
        >>> from descent.schedules import LinearWarmup, Cosine, join
        >>> s = join([LinearWarmup(10), Cosine(90)], [10])
        >>> s(5), s(10), s(100)
        (0.5, 1.0, 0.0)
    """

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[int]) -> None:
        schedules = list(schedules)
        boundaries = [check_count("boundaries", b) for b in boundaries]
        if len(schedules) != len(boundaries) + 1:
            raise ValueError(f"Invalid boundaries: {boundaries} ({len(schedules)} schedules need "
                             f"{len(schedules) - 1} boundaries)")
        if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"Invalid boundaries: {boundaries} (must be strictly increasing)")
        for s in schedules:
            if not callable(s):
                raise ValueError(f"Invalid schedules: {s!r} is not callable")
        self.schedules = schedules
        self.boundaries = boundaries

    def _piece(self, step: int) -> tuple[Any, int]:
        i = bisect_right(self.boundaries, step)
        start = self.boundaries[i - 1] if i else 0
        return self.schedules[i], step - start

    def multiplier(self, step: int) -> float:
        piece, local = self._piece(step)
        return piece(local)

    def value(self, step: Any, base: float) -> float:
        piece, local = self._piece(check_step(step))
        if isinstance(piece, Schedule):
            return piece.value(local, base)
        return base * float(piece(local))

    @property
    def absolute(self) -> bool:  # type: ignore[override]
        return all(getattr(s, "absolute", False) for s in self.schedules)

    @property
    def horizon(self) -> int | None:
        last = self.schedules[-1]
        h = last.horizon if isinstance(last, Schedule) else None
        return self.boundaries[-1] + h if h is not None else self.boundaries[-1]

    def leaves(self) -> Iterator[Schedule]:
        for s in self.schedules:
            if isinstance(s, Schedule):
                yield from s.leaves()

    def active(self, step: int) -> Schedule:
        piece, local = self._piece(check_step(step))
        return piece.active(local) if isinstance(piece, Schedule) else self


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Join:
    """Sequence ``schedules`` at ``boundaries`` (see :class:`Join`)."""
    return Join(schedules, boundaries)
