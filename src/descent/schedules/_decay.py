"""Elementary schedules: constant, step and multi-step decay, exponential, cosine,
cosine with warm restarts, linear ramps, inverse square root and Robbins–Monro.

Every class returns a multiplier of the base value; ``t`` is the number of
optimizer steps taken (``LambdaLR`` calls it ``last_epoch``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from ._base import Schedule, check_count, check_ratio

__all__ = ["Constant", "StepDecay", "MultiStep", "Exponential", "Cosine", "CosineRestarts",
           "Linear", "LinearWarmup", "InverseSqrt", "RobbinsMonro", "cosine_curve"]


def cosine_curve(progress: float, min_ratio: float) -> float:
    """Half a cosine from 1 (``progress = 0``) down to ``min_ratio`` (``progress = 1``)."""
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Constant(Schedule):
    """:math:`m(t) = c` (``factor``, default 1).

    Example:
        >>> Constant()(1000)
        1.0
    """

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = check_ratio("factor", factor, high=math.inf, open_low=True)

    def multiplier(self, step: int) -> float:
        return self.factor

    @property
    def horizon(self) -> int:
        return 0


class StepDecay(Schedule):
    """Multiply by ``drop`` every ``every`` steps: :math:`m(t) = \\text{drop}^{\\lfloor t / \\text{every} \\rfloor}`.

    Same values as ``torch.optim.lr_scheduler.StepLR(step_size=every, gamma=drop)``.

    Args:
        every: steps between drops (``>= 1``).
        drop: factor per drop, in ``(0, 1]``.

    Example:
        >>> StepDecay(every=10, drop=0.5)(25)
        0.25
    """

    def __init__(self, every: int, drop: float = 0.1) -> None:
        self.every = check_count("every", every)
        self.drop = check_ratio("drop", drop, open_low=True)

    def multiplier(self, step: int) -> float:
        return self.drop ** (step // self.every)

    @property
    def horizon(self) -> None:
        return None


class MultiStep(Schedule):
    """Multiply by ``gamma`` at each milestone: :math:`m(t) = \\gamma^{\\#\\{i: M_i \\le t\\}}`.

    Same values as ``torch.optim.lr_scheduler.MultiStepLR``.

    Example:
        >>> MultiStep([30, 80], gamma=0.1)(50)
        0.1
    """

    def __init__(self, milestones: Sequence[int], gamma: float = 0.1) -> None:
        ms = [check_count("milestones", m) for m in milestones]
        if ms != sorted(ms):
            raise ValueError(f"Invalid milestones: {list(milestones)} (must be increasing)")
        self.milestones = ms
        self.gamma = check_ratio("gamma", gamma, open_low=True)

    def multiplier(self, step: int) -> float:
        return self.gamma ** bisect_right(self.milestones, step)

    @property
    def horizon(self) -> int:
        return self.milestones[-1] if self.milestones else 0


class Exponential(Schedule):
    """:math:`m(t) = r^{t / s}` (``decay_rate`` :math:`r`, ``decay_steps`` :math:`s`), or
    :math:`r^{\\lfloor t/s \\rfloor}` with ``staircase``; floored at ``min_ratio``.

    With ``decay_steps=1`` this is ``torch.optim.lr_scheduler.ExponentialLR(gamma=decay_rate)``.

    Example:
        >>> Exponential(0.5, decay_steps=10)(20)
        0.25
    """

    def __init__(self, decay_rate: float, decay_steps: int = 1, *, staircase: bool = False,
                 min_ratio: float = 0.0) -> None:
        self.decay_rate = check_ratio("decay_rate", decay_rate, open_low=True)
        self.decay_steps = check_count("decay_steps", decay_steps)
        self.staircase = bool(staircase)
        self.min_ratio = check_ratio("min_ratio", min_ratio)

    def multiplier(self, step: int) -> float:
        exponent = step // self.decay_steps if self.staircase else step / self.decay_steps
        return max(self.decay_rate ** exponent, self.min_ratio)

    @property
    def horizon(self) -> None:
        return None


class Cosine(Schedule):
    """Cosine annealing from 1 to ``min_ratio`` over ``total_steps``, then flat.

    .. math::
        m(t) = r + (1 - r)\\,\\tfrac12\\left(1 + \\cos\\frac{\\pi \\min(t, T)}{T}\\right)

    For ``t <= T`` these are the values of ``torch.optim.lr_scheduler.CosineAnnealingLR``
    with ``T_max=T`` and ``eta_min = r * base_lr``; after ``T`` torch's curve climbs back
    up (it is periodic), descent's stays at ``r``.

    Example:
        >>> Cosine(100, min_ratio=0.1)(50)
        0.55
    """

    def __init__(self, total_steps: int, min_ratio: float = 0.0) -> None:
        self.total_steps = check_count("total_steps", total_steps)
        self.min_ratio = check_ratio("min_ratio", min_ratio)

    def multiplier(self, step: int) -> float:
        return cosine_curve(min(step, self.total_steps) / self.total_steps, self.min_ratio)


class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Cycle :math:`i` lasts :math:`T_i = T_0 \\cdot \\text{mult}^i` steps and restarts at 1
    (times ``cycle_decay``:math:`^i`); inside a cycle :math:`m = r + (h_i - r)\\frac12(1+\\cos(\\pi t_{cur}/T_i))`.
    With ``cycle_decay=1`` the values equal ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min=r*base)``.

    Args:
        period: length :math:`T_0` of the first cycle (``>= 1``).
        period_mult: integer growth of the cycle length (``>= 1``), torch's ``T_mult``.
        min_ratio: floor :math:`r` as a fraction of the base value.
        cycle_decay: peak of cycle :math:`i` is ``cycle_decay ** i`` (in ``(0, 1]``).

    Example:
        >>> s = CosineRestarts(10)
        >>> s(0), s(10)
        (1.0, 1.0)
    """

    def __init__(self, period: int, period_mult: int = 1, min_ratio: float = 0.0,
                 cycle_decay: float = 1.0) -> None:
        self.period = check_count("period", period)
        self.period_mult = check_count("period_mult", period_mult)
        self.min_ratio = check_ratio("min_ratio", min_ratio)
        self.cycle_decay = check_ratio("cycle_decay", cycle_decay, open_low=True)

    def cycle(self, step: int) -> tuple[int, int, int]:
        """``(cycle index, steps into the cycle, cycle length)`` at ``step``."""
        t0, mult = self.period, self.period_mult
        if mult == 1:
            return step // t0, step % t0, t0
        i, start, length = 0, 0, t0
        while start + length <= step:  # exact integer arithmetic, no log()
            start += length
            length *= mult
            i += 1
        return i, step - start, length

    def multiplier(self, step: int) -> float:
        i, cur, length = self.cycle(step)
        peak = self.cycle_decay ** i
        r = self.min_ratio
        return r + (peak - r) * 0.5 * (1.0 + math.cos(math.pi * cur / length))

    @property
    def horizon(self) -> None:
        return None


class Linear(Schedule):
    """Linear ramp from ``start_factor`` to ``end_factor`` over ``total_steps``, then flat.

    .. math:: m(t) = s + (e - s)\\,\\min(t, T) / T

    Same values as ``torch.optim.lr_scheduler.LinearLR`` (which requires ``s > 0``;
    descent allows ``s = 0``).

    Example:
        >>> Linear(1.0, 0.0, 10)(5)
        0.5
    """

    def __init__(self, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_steps: int = 5) -> None:
        self.start_factor = check_ratio("start_factor", start_factor)
        self.end_factor = check_ratio("end_factor", end_factor)
        self.total_steps = check_count("total_steps", total_steps)

    def multiplier(self, step: int) -> float:
        frac = min(step, self.total_steps) / self.total_steps
        return self.start_factor + (self.end_factor - self.start_factor) * frac


class LinearWarmup(Schedule):
    """Linear warmup from ``start_factor`` to 1 over ``warmup_steps``, then 1.

    .. math:: m(t) = s + (1 - s)\\,\\min(t, W)/W

    With the default ``s = 0`` step 0 has lr 0 (as Hugging Face's warmup schedules).

    Example:
        >>> LinearWarmup(100)(25)
        0.25
    """

    def __init__(self, warmup_steps: int, start_factor: float = 0.0) -> None:
        self.warmup_steps = check_count("warmup_steps", warmup_steps, minimum=0)
        self.start_factor = check_ratio("start_factor", start_factor)

    def multiplier(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps

    @property
    def horizon(self) -> int:
        return self.warmup_steps


class InverseSqrt(Schedule):
    """Inverse square root decay, :math:`m \\propto 1/\\sqrt{t}`, optionally after a linear warmup.

    Without warmup: :math:`m(t) = \\sqrt{c / (t + c)}` (``offset`` :math:`c \\ge 1`; ``m(0) = 1``),
    the step size of online/stochastic convex optimization. With ``warmup_steps = W > 0``
    (Vaswani et al. 2017; fairseq's ``inverse_sqrt``): :math:`m(t) = t/W` for :math:`t < W`,
    :math:`\\sqrt{W/t}` after.

    Example:
        >>> InverseSqrt(warmup_steps=100)(400)
        0.5
    """

    def __init__(self, warmup_steps: int = 0, offset: int = 1) -> None:
        self.warmup_steps = check_count("warmup_steps", warmup_steps, minimum=0)
        self.offset = check_count("offset", offset)

    def multiplier(self, step: int) -> float:
        w = self.warmup_steps
        if w:
            return step / w if step < w else math.sqrt(w / step)
        return math.sqrt(self.offset / (step + self.offset))

    @property
    def horizon(self) -> None:
        return None


class RobbinsMonro(Schedule):
    """Robbins–Monro decay :math:`m(t) = (1 + t/\\tau)^{-p}`.

    For :math:`p \\in (0.5, 1]` the step sizes satisfy the Robbins–Monro conditions
    :math:`\\sum_t \\eta_t = \\infty`, :math:`\\sum_t \\eta_t^2 < \\infty` (Robbins & Monro 1951);
    ``tau`` sets how many steps pass before the decay bites. ``power`` may be in ``(0, 1]``.

    Example:
        >>> RobbinsMonro(tau=10)(10)
        0.5
    """

    def __init__(self, tau: float = 1.0, power: float = 1.0) -> None:
        self.tau = check_ratio("tau", tau, high=math.inf, open_low=True)
        self.power = check_ratio("power", power, open_low=True)

    def multiplier(self, step: int) -> float:
        return (1.0 + step / self.tau) ** (-self.power)

    @property
    def horizon(self) -> None:
        return None
