"""Batch-size scaling of the learning rate, and AdamW → Lion hyperparameters, with explanations.

Heuristics (from the source documents and the papers they cite):

* linear rule (Goyal et al. 2017): batch ×k → lr ×k, valid up to a few thousand for SGD
  with warmup; square-root rule (Krizhevsky 2014; Hoffer et al. 2017; Malladi et al. 2022
  for Adam): batch ×k → lr ×√k. In practice batch ×2 → lr ×1.5–2 (the returned ``range``).
* Lion (Chen et al. 2023): lr 3–10× smaller than AdamW's, weight decay 3–10× larger, so
  that the effective decay ``lr·wd`` stays about the same.
"""

from __future__ import annotations

import math
from typing import Any

from ..optim._validate import check_nonneg, check_positive

__all__ = ["LRAdvice", "LionAdvice", "scale_lr", "lion_from_adamw"]


class LRAdvice(float):
    """A learning rate (``float``) with ``.lr``, ``.range`` (low, high) and ``.explanation``."""

    explanation: str
    range: tuple[float, float]

    def __new__(cls, lr: float, low: float, high: float, explanation: str) -> LRAdvice:
        obj = super().__new__(cls, lr)
        obj.range = (low, high)
        obj.explanation = explanation
        return obj

    @property
    def lr(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return f"LRAdvice(lr={float(self)!r}, range={self.range!r})"

    def __reduce__(self) -> Any:
        return (LRAdvice, (float(self), *self.range, self.explanation))


def scale_lr(lr: float, from_batch: int, to_batch: int, rule: str = "linear") -> LRAdvice:
    """Scale ``lr`` tuned at ``from_batch`` to ``to_batch``.

    .. math:: \\eta' = \\eta \\cdot k \\;(\\text{linear}), \\qquad \\eta' = \\eta\\sqrt{k} \\;(\\text{sqrt}), \\qquad k = B'/B

    ``range`` brackets the practical rule "batch ×2 → lr ×1.5–2", i.e.
    :math:`\\eta \\cdot (1.5^{\\log_2 k},\\ 2^{\\log_2 k})` (reversed when shrinking).

    Example:
        >>> a = scale_lr(1e-3, 256, 512, rule="sqrt")
        >>> round(a.lr, 6), [round(v, 6) for v in a.range]
        (0.001414, [0.0015, 0.002])
    """
    check_positive("lr", lr)
    for name, b in (("from_batch", from_batch), ("to_batch", to_batch)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"Invalid {name}: {b!r} (must be an integer >= 1)")
    if rule not in ("linear", "sqrt"):
        raise ValueError(f"Invalid rule: {rule!r} (must be 'linear' or 'sqrt')")
    k = to_batch / from_batch
    new = lr * (k if rule == "linear" else math.sqrt(k))
    doublings = math.log2(k)
    a, b = lr * 1.5 ** doublings, lr * 2.0 ** doublings
    low, high = min(a, b), max(a, b)
    why = {"linear": "linear rule (Goyal et al. 2017; SGD, with warmup, up to batch ~8k)",
           "sqrt": "square-root rule (Hoffer et al. 2017; Malladi et al. 2022 for Adam-type optimizers)"}[rule]
    text = (f"batch {from_batch} -> {to_batch} (x{k:g}): lr {lr:g} -> {new:g} by the {why}; "
            f"the practical range (batch x2 -> lr x1.5-2) is {low:.3g}..{high:.3g}. "
            "Re-check with an LR range test; larger batches also need a longer warmup.")
    return LRAdvice(new, low, high, text)


class LionAdvice(dict):
    """``{"lr": ..., "weight_decay": ...}`` for Lion (pass as ``**kwargs``), plus ranges and an explanation."""

    def __init__(self, lr: float, weight_decay: float, lr_range: tuple[float, float],
                 weight_decay_range: tuple[float, float], explanation: str) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay)
        self.lr_range = lr_range
        self.weight_decay_range = weight_decay_range
        self.explanation = explanation

    @property
    def lr(self) -> float:
        return self["lr"]

    @property
    def weight_decay(self) -> float:
        return self["weight_decay"]


def lion_from_adamw(lr: float, weight_decay: float, factor: float = 3.0) -> LionAdvice:
    """Lion hyperparameters from tuned AdamW ones: ``lr / factor`` and ``weight_decay * factor``.

    ``factor`` is in ``[3, 10]`` per Chen et al. (2023); the default 3 stays closest to
    the AdamW run. The product ``lr * weight_decay`` (the decoupled decay strength) is kept.

    Example:
        >>> a = lion_from_adamw(3e-4, 0.1)
        >>> round(a.lr, 8), round(a.weight_decay, 6)
        (0.0001, 0.3)
    """
    check_positive("lr", lr)
    check_nonneg("weight_decay", weight_decay)
    if not 1.0 <= factor <= 30.0:
        raise ValueError(f"Invalid factor: {factor} (must be in [1, 30]; the paper uses 3-10)")
    text = (f"Lion's update has unit magnitude per coordinate (sign), so it needs a lr {factor:g}x smaller than "
            f"AdamW's ({lr:g} -> {lr / factor:g}) and a weight decay {factor:g}x larger ({weight_decay:g} -> "
            f"{weight_decay * factor:g}) to keep lr*wd; Chen et al. (2023) recommend 3-10x.")
    return LionAdvice(lr / factor, weight_decay * factor, (lr / 10.0, lr / 3.0),
                      (weight_decay * 3.0, weight_decay * 10.0), text)
