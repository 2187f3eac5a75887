"""Gradient clipping that reports what it saw: the norm before clipping and whether it clipped.

:func:`clip_grad_norm_` and :func:`clip_grad_value_` change the gradients exactly as
``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` do (they run torch's
``get_total_norm`` and ``clip_grads_with_norm_``, foreach where the device supports it),
and return a :class:`ClipResult`.

``ClipResult`` is a ``float`` (the total norm before clipping) with extra attributes, so
code written for torch's return value keeps working where it used the number:
``float(r)``, ``r.item()``, ``r > 10``, ``f"{r:.3f}"``, ``math.isfinite(r)``, logging.
What does not carry over is tensor-only use (``r.isfinite()``, ``r.to(...)``); use
``r.tensor`` for those. Computing ``clipped`` reads the norm on the host (one device
sync per call, which torch avoids; ``tensor`` keeps the device value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Union

import torch
from torch import Tensor

from ..optim._validate import check_nonneg, check_positive

__all__ = ["ClipResult", "clip_grad_norm_", "clip_grad_value_"]

Params = Union[Tensor, Iterable[Tensor]]


class ClipResult(float):
    """Total gradient norm before clipping (a ``float``) plus ``clipped``, ``max_norm`` and ``tensor``.

    Attributes:
        total_norm: the norm before clipping (same as ``float(self)``).
        clipped: whether the gradients were scaled down (or clamped, for value clipping).
        max_norm: the threshold used (``clip_value`` for value clipping).
        tensor: the norm as a 0-d tensor on the gradients' device (torch's return value).
    """

    clipped: bool
    max_norm: float
    tensor: Tensor

    def __new__(cls, total_norm: Tensor, clipped: bool, max_norm: float) -> ClipResult:
        obj = super().__new__(cls, float(total_norm))
        obj.clipped = bool(clipped)
        obj.max_norm = float(max_norm)
        obj.tensor = total_norm
        return obj

    @property
    def total_norm(self) -> float:
        return float(self)

    @property
    def finite(self) -> bool:
        """Whether the norm is finite (a NaN/Inf norm means a non-finite gradient)."""
        return math.isfinite(self)

    def item(self) -> float:
        """The norm as a Python float (as ``Tensor.item``)."""
        return float(self)

    def __repr__(self) -> str:
        return f"ClipResult(total_norm={float(self)!r}, clipped={self.clipped}, max_norm={self.max_norm!r})"

    def __reduce__(self) -> Any:
        return (ClipResult, (self.tensor, self.clipped, self.max_norm))


def _grads(parameters: Params) -> tuple[list[Tensor], list[Tensor]]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return params, [p.grad for p in params if p.grad is not None]


def clip_grad_norm_(parameters: Params, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> ClipResult:
    """Scale all gradients so that their joint norm is at most ``max_norm``; report the norm before.

    .. math::
        \\|g\\| = \\Bigl(\\sum_i \\|g_i\\|_p^p\\Bigr)^{1/p}, \\qquad
        g_i \\leftarrow g_i \\cdot \\min\\Bigl(1, \\frac{c}{\\|g\\| + 10^{-6}}\\Bigr)

    Bit-for-bit what ``torch.nn.utils.clip_grad_norm_`` does (same arguments, same
    ``1e-6``); the return value is a :class:`ClipResult` (the norm, as a float, with
    ``clipped = c / (\\|g\\| + 10^{-6}) < 1``).

    Args:
        parameters: a tensor or an iterable of tensors whose ``.grad`` is clipped.
        max_norm: :math:`c`, the largest allowed norm (``> 0``).
        norm_type: :math:`p` (``inf`` for the max-abs norm).
        error_if_nonfinite: raise ``RuntimeError`` if the norm is NaN/Inf (as torch).
        foreach: torch's foreach switch (``None``: use it where the device supports it).

    Returns:
        The total norm before clipping and whether it clipped.

    Example:
        >>> import torch, descent
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> r = descent.clip_grad_norm_([p], max_norm=1.0)
        >>> float(r), r.clipped, round(p.grad.norm().item(), 4)
        (5.0, True, 1.0)
    """
    check_positive("max_norm", max_norm)
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"Invalid norm_type: {norm_type} (must be > 0)")
    params, grads = _grads(parameters)
    if not grads:
        return ClipResult(torch.tensor(0.0), False, max_norm)
    total = torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
    coef = float(max_norm) / (float(total) + 1e-6)
    return ClipResult(total, coef < 1.0, max_norm)


def clip_grad_value_(parameters: Params, clip_value: float, foreach: bool | None = None,
                     norm_type: float = 2.0) -> ClipResult:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``; report the norm before.

    .. math:: g \\leftarrow \\operatorname{clamp}(g, -c, c)

    The gradients change exactly as with ``torch.nn.utils.clip_grad_value_`` (which
    returns nothing); descent also returns the ``norm_type`` norm before clamping and
    ``clipped = max |g| > c``. That costs one more reduction over the gradients.

    Args:
        parameters: a tensor or an iterable of tensors whose ``.grad`` is clamped.
        clip_value: :math:`c` (``>= 0``).
        foreach: torch's foreach switch.
        norm_type: the norm reported (default 2).

    Example:
        >>> import torch, descent
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, -0.5])
        >>> r = descent.clip_grad_value_([p], clip_value=1.0)
        >>> r.clipped, p.grad.tolist()
        (True, [1.0, -0.5])
    """
    check_nonneg("clip_value", clip_value)
    params, grads = _grads(parameters)
    if not grads:
        return ClipResult(torch.tensor(0.0), False, clip_value)
    total = torch.nn.utils.get_total_norm(grads, norm_type, False, foreach)
    nonempty = [g for g in grads if g.numel()]  # torch's inf-norm raises on empty tensors
    peak = torch.nn.utils.get_total_norm(nonempty, math.inf, False, foreach) if nonempty else torch.tensor(0.0)
    torch.nn.utils.clip_grad_value_(params, clip_value, foreach=foreach)
    return ClipResult(total, bool(peak > clip_value), clip_value)
