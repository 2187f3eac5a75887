"""The typed view of a run's history that every doctor rule reads (:class:`History`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["History", "Thresholds"]

_ALIGNED = ("lr", "grad_norm", "clipped", "nonfinite_grads", "skipped_steps")


def _num(values: Sequence[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or isinstance(v, (dict, list)):
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            continue
    return out


@dataclass(frozen=True)
class Thresholds:
    """The doctor's tunable thresholds (the keyword arguments of :func:`descent.diagnose`)."""

    early_steps: int = 300
    divergence_factor: float = 2.0
    plateau_tol: float = 0.1
    oscillation_tol: float = 0.08
    clip_fraction: float = 0.5
    overfit_tol: float = 0.05


@dataclass(frozen=True)
class History:
    """A run's history as aligned float arrays: what a doctor rule may read.

    Arrays aligned with ``step`` (NaN = not recorded at that row, except ``loss`` whose
    recorded rows ``loss_recorded`` tells apart, since a recorded loss may itself be NaN):
    ``step``, ``loss``, ``loss_recorded`` (bool), ``lr``, ``grad_norm``, ``clipped`` (1/0),
    ``nonfinite_grads``, ``skipped_steps``. ``val_step``/``val_loss`` hold the recorded
    validation points only; ``cadence`` the per-epoch findings of descent ``Scheduler`` s.
    Rows with a repeated step (a run killed and resumed) are kept once: the last one.

    Example:
        >>> h = History.from_any({"loss": [2.0, 1.5, 1.2], "lr": [0.1, 0.1, 0.1]})
        >>> h.step.tolist(), h.n
        ([0.0, 1.0, 2.0], 3)
    """

    step: np.ndarray
    loss: np.ndarray
    loss_recorded: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    clipped: np.ndarray
    nonfinite_grads: np.ndarray
    skipped_steps: np.ndarray
    val_step: np.ndarray
    val_loss: np.ndarray
    cadence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self.loss)

    @classmethod
    def from_any(cls, history: Any) -> History:
        """Build the view from a :class:`descent.Monitor`, a list of per-step dicts or a dict of columns.

        Raises:
            ValueError: another type, no ``loss`` column, or columns of different lengths.
        """
        cols = _columns_of(history)
        if "loss" not in cols:
            raise ValueError(f"Invalid history: no 'loss' column (columns: {sorted(cols)})")
        raw_loss = list(cols["loss"])
        n = len(raw_loss)
        arrays: dict[str, Any] = {"loss": _num(raw_loss),
                                  "loss_recorded": np.array([v is not None for v in raw_loss], dtype=bool)}
        arrays["step"] = _num(list(cols["step"])) if "step" in cols else np.arange(n, dtype=float)
        if len(arrays["step"]) != n:
            raise ValueError(f"Invalid history: column 'step' has {len(arrays['step'])} rows, 'loss' has {n}")
        for key in _ALIGNED:
            col = list(cols.get(key, [None] * n))
            if len(col) != n:
                raise ValueError(f"Invalid history: column {key!r} has {len(col)} rows, 'loss' has {n}")
            arrays[key] = _num(col)
        val_step, val_loss = _val(cols, arrays["step"], n)
        notes = list(getattr(history, "notes", []) or [])
        keep = _last_of_each_step(arrays["step"])
        if keep is not None:
            notes.append(f"{n - len(keep)} row(s) repeat an earlier step (a resumed run?): "
                         "each step counted once, its last row kept")
            arrays = {k: v[keep] for k, v in arrays.items()}
        cadence = [c for c in cols.get("cadence", []) if c]
        return cls(val_step=val_step, val_loss=val_loss, cadence=cadence, notes=notes, **arrays)


def _columns_of(history: Any) -> Mapping[str, Sequence[Any]]:
    if hasattr(history, "columns") and callable(history.columns):
        return history.columns()
    if isinstance(history, Mapping):
        return history
    if isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        if not all(isinstance(r, Mapping) for r in history):
            raise ValueError("Invalid history: a list must hold one dict per step")
        keys = sorted({k for r in history for k in r})
        return {k: [r.get(k) for r in history] for k in keys}
    raise ValueError(f"Invalid history: expected a Monitor, a list of dicts or a dict of columns, "
                     f"got {type(history).__name__}")


def _last_of_each_step(step: np.ndarray) -> np.ndarray | None:
    """Row indices keeping the last row of each repeated step, in step order; None if no step repeats."""
    finite = np.isfinite(step)
    if len(np.unique(step[finite])) == int(finite.sum()):
        return None
    last = {float(s): i for i, s in enumerate(step) if np.isfinite(s)}
    return np.array(sorted(last.values(), key=lambda i: step[i]), dtype=int)


def _val(cols: Mapping[str, Sequence[Any]], step: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    val = list(cols.get("val_loss", []))
    if not val:
        return np.array([]), np.array([])
    if "val_step" in cols:
        vs = _num(list(cols["val_step"]))
        if len(vs) != len(val):
            raise ValueError("Invalid history: 'val_step' and 'val_loss' differ in length")
    elif len(val) == n:
        vs = step
    else:  # evenly spread over the run, each at the end of its span
        vs = np.array([step[min(n - 1, int(round((i + 1) * n / len(val))) - 1)] for i in range(len(val))])
    v = _num(val)
    keep = np.array([x is not None for x in val], dtype=bool)
    vs, v = vs[keep], v[keep]
    if len(vs) and len(np.unique(vs)) < len(vs):  # a resumed run: the last value of each step
        last = {s: i for i, s in enumerate(vs.tolist())}
        idx = np.array(sorted(last.values(), key=lambda i: vs[i]))
        vs, v = vs[idx], v[idx]
    return vs, v
