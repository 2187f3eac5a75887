"""Warmup-then-decay schedules (the LLM standard), warmup-stable-decay and OneCycle.

``warmup`` is a step count (``int``) or a fraction of ``total_steps`` (``float`` in
``[0, 1)``, e.g. ``0.02`` for the 0.5–3 % the source documents recommend). The warmup
is linear from ``start_factor`` (default 0, as Hugging Face's
``get_cosine_schedule_with_warmup``) to 1.
"""

from __future__ import annotations

import math

from ._base import Schedule, check_count, check_ratio, resolve_warmup
from ._decay import cosine_curve

__all__ = ["WarmupCosine", "WarmupLinear", "WarmupExponential", "WarmupStableDecay",
           "OneCycle", "OneCycleMomentum"]


class _Warmup(Schedule):
    """Shared part: linear warmup over ``warmup_steps``, then ``decay(t - W)``."""

    def __init__(self, total_steps: int | None, warmup: int | float, start_factor: float) -> None:
        if total_steps is not None:
            self.total_steps = check_count("total_steps", total_steps)
        self.warmup_steps = resolve_warmup(warmup, total_steps)
        self.start_factor = check_ratio("start_factor", start_factor)

    def decay(self, since: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def multiplier(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return self.start_factor + (1.0 - self.start_factor) * step / w
        return self.decay(step - w)


class WarmupCosine(_Warmup):
    """Linear warmup for :math:`W` steps, then cosine to ``min_ratio`` :math:`r` at ``total_steps`` :math:`T`.

    .. math::
        m(t) = \\begin{cases} s + (1-s)\\,t/W & t < W \\\\
               r + (1-r)\\,\\tfrac12\\bigl(1 + \\cos(\\pi \\min(1, \\tfrac{t-W}{T-W}))\\bigr) & t \\ge W\\end{cases}

    (nanoGPT's ``get_lr``; Hugging Face's ``get_cosine_schedule_with_warmup`` for ``r = 0``.)

    Example:
        >>> s = WarmupCosine(1000, warmup=0.1, min_ratio=0.1)
        >>> s(50), s(100), s(1000)
        (0.5, 1.0, 0.1)
    """

    def __init__(self, total_steps: int, warmup: int | float = 0.02, min_ratio: float = 0.0,
                 start_factor: float = 0.0) -> None:
        super().__init__(total_steps, warmup, start_factor)
        self.min_ratio = check_ratio("min_ratio", min_ratio)

    def decay(self, since: int) -> float:
        span = self.total_steps - self.warmup_steps
        return cosine_curve(min(since / span, 1.0), self.min_ratio)


class WarmupLinear(_Warmup):
    """Linear warmup for :math:`W` steps, then linear decay to ``min_ratio`` at ``total_steps``.

    .. math:: m(t) = r + (1-r)\\max\\bigl(0, \\tfrac{T - t}{T - W}\\bigr), \\quad t \\ge W

    (Hugging Face's ``get_linear_schedule_with_warmup`` for ``r = 0``.)

    Example:
        >>> WarmupLinear(100, warmup=10)(55)
        0.5
    """

    def __init__(self, total_steps: int, warmup: int | float = 0.02, min_ratio: float = 0.0,
                 start_factor: float = 0.0) -> None:
        super().__init__(total_steps, warmup, start_factor)
        self.min_ratio = check_ratio("min_ratio", min_ratio)

    def decay(self, since: int) -> float:
        span = self.total_steps - self.warmup_steps
        left = max(0.0, (span - since) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * left


class WarmupExponential(_Warmup):
    """Linear warmup for :math:`W` steps, then :math:`m = \\max(r, d^{(t-W)/s})`.

    Args:
        warmup: warmup steps (an ``int``; a fraction needs ``total_steps``).
        decay_rate: :math:`d` in ``(0, 1]`` per ``decay_steps`` :math:`s`.
        total_steps: optional, only to resolve a fractional warmup.

    Example:
        >>> WarmupExponential(10, decay_rate=0.5, decay_steps=10)(30)
        0.25
    """

    def __init__(self, warmup: int | float, decay_rate: float, decay_steps: int = 1, *,
                 min_ratio: float = 0.0, start_factor: float = 0.0, total_steps: int | None = None) -> None:
        super().__init__(total_steps, warmup, start_factor)
        self.decay_rate = check_ratio("decay_rate", decay_rate, open_low=True)
        self.decay_steps = check_count("decay_steps", decay_steps)
        self.min_ratio = check_ratio("min_ratio", min_ratio)

    def decay(self, since: int) -> float:
        return max(self.decay_rate ** (since / self.decay_steps), self.min_ratio)

    @property
    def horizon(self) -> int:
        return self.warmup_steps


class WarmupStableDecay(_Warmup):
    """Warmup-stable-decay ("WSD", MiniCPM, Hu et al. 2024): warm up, hold at 1, then decay in the last part.

    Warmup :math:`W` steps, hold until :math:`T - D`, then go from 1 to ``min_ratio``
    :math:`r` over the last :math:`D` (``decay``: steps or a fraction of ``total_steps``)
    with shape ``"linear"`` (:math:`1-p`), ``"cosine"`` or ``"sqrt"`` (:math:`1-\\sqrt p`).

    Example:
        >>> s = WarmupStableDecay(100, warmup=10, decay=0.2)
        >>> s(50), s(90), s(100)
        (1.0, 0.5, 0.0)
    """

    _shapes = ("linear", "cosine", "sqrt")

    def __init__(self, total_steps: int, warmup: int | float = 0.02, decay: int | float = 0.1,
                 min_ratio: float = 0.0, shape: str = "linear", start_factor: float = 0.0) -> None:
        super().__init__(total_steps, warmup, start_factor)
        if isinstance(decay, float):
            if not 0.0 < decay <= 1.0:
                raise ValueError(f"Invalid decay: {decay} (a float decay is a fraction and must be in (0, 1])")
            decay_steps = int(round(decay * total_steps))
        else:
            decay_steps = check_count("decay", decay, minimum=0)
        if self.warmup_steps + decay_steps > total_steps:
            raise ValueError(f"Invalid decay: {decay} (warmup {self.warmup_steps} + decay {decay_steps} "
                             f"steps exceed total_steps={total_steps})")
        if shape not in self._shapes:
            raise ValueError(f"Invalid shape: {shape!r} (must be one of {self._shapes})")
        self.decay_steps = decay_steps
        self.min_ratio = check_ratio("min_ratio", min_ratio)
        self.shape = shape

    def decay(self, since: int) -> float:  # type: ignore[override]
        start = self.total_steps - self.decay_steps - self.warmup_steps
        if since < start or self.decay_steps == 0:
            return 1.0
        p = min((since - start) / self.decay_steps, 1.0)
        if self.shape == "cosine":
            return cosine_curve(p, self.min_ratio)
        frac = 1.0 - (math.sqrt(p) if self.shape == "sqrt" else p)
        return self.min_ratio + (1.0 - self.min_ratio) * frac


def _anneal(start: float, end: float, pct: float, how: str) -> float:
    if how == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return (end - start) * pct + start


class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin 2018), as ``torch.optim.lr_scheduler.OneCycleLR``.

    The base lr is the peak (torch's ``max_lr``). The multiplier rises from
    :math:`1/\\text{div}` to 1 during the first ``pct_start`` of ``total_steps``, then
    anneals to :math:`1/(\\text{div}\\cdot\\text{final\\_div})`; ``three_phase`` goes back to
    :math:`1/\\text{div}` first, as torch does. ``anneal`` is ``"cos"`` or ``"linear"``.
    Phase ends are at ``pct_start*T - 1`` (and ``2*pct_start*T - 2``) and ``T - 1``, so the
    values equal torch's step by step. :meth:`momentum` gives the matching inverse cycle of
    momentum / ``beta1`` (``max_momentum`` → ``base_momentum`` → ``max_momentum``).

    Example:
        >>> s = OneCycle(100, pct_start=0.25, div_factor=10)
        >>> round(s(0), 6), s(24)
        (0.1, 1.0)
    """

    def __init__(self, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal: str = "cos", three_phase: bool = False) -> None:
        self.total_steps = check_count("total_steps", total_steps, minimum=2)
        self.pct_start = check_ratio("pct_start", pct_start, open_low=True, open_high=True)
        self.div_factor = check_ratio("div_factor", div_factor, low=1.0, high=math.inf)
        self.final_div_factor = check_ratio("final_div_factor", final_div_factor, low=1.0, high=math.inf)
        if anneal not in ("cos", "linear"):
            raise ValueError(f"Invalid anneal: {anneal!r} (must be 'cos' or 'linear')")
        self.anneal = anneal
        self.three_phase = bool(three_phase)

    def phases(self, low: float, peak: float, final: float) -> list[tuple[float, float, float]]:
        """``(end_step, start_value, end_value)`` of each phase, for values ``low -> peak -> final``."""
        t, p = self.total_steps, self.pct_start
        if self.three_phase:
            return [(p * t - 1, low, peak), (2 * p * t - 2, peak, low), (t - 1, low, final)]
        return [(p * t - 1, low, peak), (t - 1, peak, final)]

    def _walk(self, step: int, phases: list[tuple[float, float, float]]) -> float:
        if step > self.total_steps - 1:
            step = self.total_steps - 1  # torch raises here; descent holds the final value
        start_step = 0.0
        for i, (end_step, v0, v1) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                return _anneal(v0, v1, (step - start_step) / (end_step - start_step), self.anneal)
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover

    def multiplier(self, step: int) -> float:
        low = 1.0 / self.div_factor
        return self._walk(step, self.phases(low, 1.0, low / self.final_div_factor))

    def momentum(self, base_momentum: float = 0.85, max_momentum: float = 0.95) -> OneCycleMomentum:
        """The inverse momentum cycle for this schedule (absolute values, for ``hyperparam="momentum"``/``"betas"``)."""
        return OneCycleMomentum(self, base_momentum, max_momentum)


class OneCycleMomentum(Schedule):
    """Momentum (or ``beta1``) of :class:`OneCycle`: absolute values, cycled inversely to the lr."""

    absolute = True

    def __init__(self, cycle: OneCycle, base_momentum: float = 0.85, max_momentum: float = 0.95) -> None:
        self.cycle = cycle
        self.base_momentum = check_ratio("base_momentum", base_momentum, open_high=True)
        self.max_momentum = check_ratio("max_momentum", max_momentum, open_high=True)
        if self.base_momentum > self.max_momentum:
            raise ValueError(f"Invalid base_momentum: {base_momentum} (must be <= max_momentum={max_momentum})")
        self.total_steps = cycle.total_steps

    def multiplier(self, step: int) -> float:
        hi, lo = self.max_momentum, self.base_momentum
        return self.cycle._walk(step, self.cycle.phases(hi, lo, hi))
