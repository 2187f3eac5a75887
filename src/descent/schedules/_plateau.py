"""Reduce the learning rate when a validation metric stops improving, as a chainable schedule."""

from __future__ import annotations

import math
from typing import Any

from ._base import Schedule, check_count, check_ratio

__all__ = ["ReduceLROnPlateau"]


class ReduceLROnPlateau(Schedule):
    """Multiply by ``factor`` after ``patience`` evaluations without improvement.

    Same rule as ``torch.optim.lr_scheduler.ReduceLROnPlateau``: a metric ``a`` improves on
    the best ``b`` when (``mode="min"``) :math:`a < b(1-\\theta)` (``threshold_mode="rel"``)
    or :math:`a < b - \\theta` (``"abs"``), mirrored for ``"max"``; after more than
    ``patience`` bad evaluations the multiplier is reduced and ``cooldown`` evaluations
    are ignored. Unlike torch's it is a *schedule* (``step -> multiplier``) whose state
    changes only through :meth:`step` with a metric, so it can follow a warmup inside
    :func:`~descent.schedules.join` (pytorch #68978) and lives in the adapter's
    ``state_dict``. ``min_lr`` is absolute (as torch's); ``min_ratio`` is relative to the
    base value. Difference from torch: no ``eps`` (a reduction smaller than ``eps`` is
    applied, where torch skips it).

    Args:
        mode: ``"min"`` (loss) or ``"max"`` (accuracy).
        factor: multiplier per reduction, in ``(0, 1)``.
        patience: bad evaluations tolerated before reducing (``>= 0``).
        threshold: minimal significant change (``>= 0``).
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: evaluations to wait after a reduction (``>= 0``).
        min_lr: floor on the scheduled value (absolute).
        min_ratio: floor on the multiplier.

    Example:
        >>> from descent.schedules import LinearWarmup, ReduceLROnPlateau, join
        >>> plateau = ReduceLROnPlateau(factor=0.5, patience=0)
        >>> s = join([LinearWarmup(10), plateau], [10])
        >>> for loss in (1.0, 1.0, 1.0):
        ...     _ = plateau.step(loss)
        >>> s(20)
        0.25
    """

    stateful = True

    def __init__(self, mode: str = "min", factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 min_ratio: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid mode: {mode!r} (must be 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"Invalid threshold_mode: {threshold_mode!r} (must be 'rel' or 'abs')")
        self.mode = mode
        self.factor = check_ratio("factor", factor, open_low=True, open_high=True)
        self.patience = check_count("patience", patience, minimum=0)
        self.threshold = check_ratio("threshold", threshold, high=math.inf)
        self.threshold_mode = threshold_mode
        self.cooldown = check_count("cooldown", cooldown, minimum=0)
        self.min_lr = check_ratio("min_lr", min_lr, high=math.inf)
        self.min_ratio = check_ratio("min_ratio", min_ratio)
        self._reset()

    def _reset(self) -> None:
        self.scale = 1.0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.num_reductions = 0

    def is_better(self, metric: float, best: float) -> bool:
        """Whether ``metric`` improves significantly on ``best``."""
        if self.mode == "min":
            bound = best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
            return metric < bound
        bound = best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
        return metric > bound

    def step(self, metric: Any) -> float:
        """Record one evaluation of the metric; return the (possibly reduced) multiplier."""
        value = float(metric)
        if self.is_better(value, self.best):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.scale = max(self.scale * self.factor, self.min_ratio)
            self.num_reductions += 1
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.scale

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def multiplier(self, step: int) -> float:
        return self.scale

    def value(self, step: Any, base: float) -> float:
        return max(base * self(step), self.min_lr)

    @property
    def horizon(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """The mutable state (plain floats and ints, ``torch.load(weights_only=True)`` safe)."""
        return {k: getattr(self, k) for k in ("scale", "best", "num_bad_epochs", "cooldown_counter", "num_reductions")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for k, v in state.items():
            setattr(self, k, v)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__
