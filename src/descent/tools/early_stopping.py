"""Early stopping on a validation metric, with best-weight restoration."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Decide when to stop from a validation metric; optionally keep and restore the best weights.

    Two rules (``rule``):

    * ``"patience"`` (Keras/Lightning): a value improves when :math:`v < b - \\delta` (``mode="min"``)
      or :math:`v > b + \\delta` (``"max"``) with :math:`b` the best so far and :math:`\\delta` =
      ``min_delta``; stop after ``patience`` consecutive evaluations without improvement.
    * ``"window"`` (the source documents' rule): once more than ``k`` values are recorded, stop
      when the last one is worse than the best of the ``k - 1`` before it (``history[-1] >
      min(history[-k:-1]) + min_delta`` for ``"min"``).

    Args:
        patience: evaluations without improvement tolerated (``"patience"`` rule).
        min_delta: the smallest change that counts (``>= 0``).
        mode: ``"min"`` (loss) or ``"max"`` (accuracy).
        rule: ``"patience"`` or ``"window"``.
        k: the window of the ``"window"`` rule (``>= 2``).
        restore_best: keep a copy of the model's ``state_dict`` at the best value.

    Example:
        >>> stopper = EarlyStopping(patience=2)
        >>> [stopper.step(v) for v in [1.0, 0.8, 0.85, 0.9]]
        [False, False, False, True]
        >>> stopper.best, stopper.best_index
        (0.8, 1)
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, mode: str = "min", *,
                 rule: str = "patience", k: int = 10, restore_best: bool = True) -> None:
        if int(patience) != patience or patience < 0:
            raise ValueError(f"Invalid patience: {patience} (must be an integer >= 0)")
        if not min_delta >= 0:
            raise ValueError(f"Invalid min_delta: {min_delta} (must be >= 0)")
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid mode: {mode!r} (must be 'min' or 'max')")
        if rule not in ("patience", "window"):
            raise ValueError(f"Invalid rule: {rule!r} (must be 'patience' or 'window')")
        if int(k) != k or k < 2:
            raise ValueError(f"Invalid k: {k} (must be an integer >= 2)")
        self.patience, self.min_delta, self.mode, self.rule, self.k = int(patience), float(min_delta), mode, rule, int(k)
        self.restore_best = restore_best
        self.history: list[float] = []
        self.best: float | None = None
        self.best_index: int | None = None
        self.bad_count = 0
        self.stopped = False
        self.best_state: dict[str, Any] | None = None

    def _better(self, value: float, than: float) -> bool:
        return value < than - self.min_delta if self.mode == "min" else value > than + self.min_delta

    def step(self, value: Any, model: nn.Module | None = None) -> bool:
        """Record one evaluation; return True when training should stop.

        A non-finite value never counts as an improvement. With ``restore_best`` and a ``model``,
        the model's weights are copied whenever the value is the best so far.
        """
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        self.history.append(v)
        improved = math.isfinite(v) and (self.best is None or self._better(v, self.best))
        if improved:
            self.best, self.best_index, self.bad_count = v, len(self.history) - 1, 0
            if self.restore_best and model is not None:
                self.best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            self.bad_count += 1
        if self.rule == "patience":
            self.stopped = not improved and self.bad_count >= self.patience
        else:
            self.stopped = self._window_stop()
        return self.stopped

    def _window_stop(self) -> bool:
        h = self.history
        if len(h) <= self.k:
            return False
        prev = [x for x in h[-self.k:-1] if math.isfinite(x)]
        if not prev:
            return True
        last = h[-1]
        if not math.isfinite(last):
            return True
        return last > min(prev) + self.min_delta if self.mode == "min" else last < max(prev) - self.min_delta

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model``; return False when none were kept."""
        if self.best_state is None:
            return False
        model.load_state_dict(copy.deepcopy(self.best_state))
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (the kept weights included)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in ("history", "best", "best_index", "bad_count",
                                                             "stopped", "best_state")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, copy.deepcopy(value))
