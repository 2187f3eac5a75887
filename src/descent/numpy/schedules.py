"""Learning-rate schedules as closed-form multipliers of the base rate.

Each factory returns ``f(t) -> multiplier`` for the iteration ``t = 0, 1, ...``, so
:math:`\\eta_t = \\eta\\, f(t)`; pass it as ``schedule=`` to any :mod:`descent.numpy`
optimizer, or to ``torch.optim.lr_scheduler.LambdaLR`` for the same rates in torch.

Example:
    >>> f = step_decay(drop=0.5, every=10)
    >>> [f(0), f(9), f(10), f(25)]
    [1.0, 1.0, 0.5, 0.25]
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["constant", "step_decay", "exponential_decay", "cosine_annealing", "warmup_cosine", "invscaling"]

Schedule = Callable[[int], float]


def constant() -> Schedule:
    """:math:`f(t) = 1`."""
    return lambda t: 1.0


def step_decay(drop: float = 0.5, every: int = 10) -> Schedule:
    """:math:`f(t) = \\text{drop}^{\\lfloor t / \\text{every} \\rfloor}`."""
    return lambda t: drop ** (t // every)


def exponential_decay(rate: float = 0.95) -> Schedule:
    """:math:`f(t) = \\text{rate}^t`."""
    return lambda t: rate**t


def cosine_annealing(total: int) -> Schedule:
    """:math:`f(t) = \\tfrac12(1 + \\cos(\\pi \\min(t, T) / T))`: from 1 to 0 over ``total`` iterations."""
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def warmup_cosine(warmup: int, total: int) -> Schedule:
    """Linear warmup to 1 over ``warmup`` iterations (:math:`(t+1)/W`), then a cosine to 0 at ``total``."""
    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        progress = min(t - warmup, total - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def invscaling(power_t: float = 0.5) -> Schedule:
    """scikit-learn's inverse scaling, :math:`f(t) = 1 / (t + 1)^{p}` (scikit-learn counts from 1)."""
    return lambda t: 1.0 / (t + 1.0) ** power_t
