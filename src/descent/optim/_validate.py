"""Argument checks shared by every optimizer, schedule and tool.

Each check raises ``ValueError`` naming the argument and the bad value, e.g.
``ValueError("Invalid beta2: 1.5 (must be in [0, 1))")``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "check_nonneg",
    "check_positive",
    "check_unit_interval",
    "check_range",
    "check_betas",
    "as_float",
]


def as_float(name: str, value: Any) -> float:
    """Return ``value`` as a Python float (a one-element tensor is accepted)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: a tensor {name} must have one element, got shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a number)")
    return float(value)


def _finite(name: str, value: Any) -> float:
    v = as_float(name, value)
    if math.isnan(v):
        raise ValueError(f"Invalid {name}: {v} (must not be NaN)")
    return v


def check_nonneg(name: str, value: Any) -> None:
    """Raise unless ``value >= 0``."""
    v = _finite(name, value)
    if v < 0:
        raise ValueError(f"Invalid {name}: {v} (must be >= 0)")


def check_positive(name: str, value: Any) -> None:
    """Raise unless ``value > 0``."""
    v = _finite(name, value)
    if not v > 0:
        raise ValueError(f"Invalid {name}: {v} (must be > 0)")


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    """Raise unless ``value`` is in ``[0, 1)`` (or ``[0, 1]`` with ``closed_right``)."""
    v = _finite(name, value)
    ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        bounds = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"Invalid {name}: {v} (must be in {bounds})")


def check_range(name: str, value: Any, low: float, high: float) -> None:
    """Raise unless ``low <= value <= high``."""
    v = _finite(name, value)
    if not low <= v <= high:
        raise ValueError(f"Invalid {name}: {v} (must be in [{low}, {high}])")


def check_betas(betas: Any, names: tuple[str, str] = ("beta1", "beta2")) -> None:
    """Raise unless ``betas`` is a pair with each entry in ``[0, 1)``."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    for name, b in zip(names, betas):
        check_unit_interval(name, b)
