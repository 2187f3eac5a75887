"""Gradient accumulation to an effective batch size, exact when micro-batches differ in size.

The common recipe ``(loss / k).backward()`` averages the micro-batch *means*, which is
wrong when the last micro-batch is smaller or when the loss is a per-token mean over
sequences of different lengths (transformers #35203). :class:`GradientAccumulator`
weights each micro-batch by its item count and divides by the total at the end:

.. math::
    g = \\frac{1}{\\sum_j n_j} \\sum_j n_j \\nabla \\bar\\ell_j

which equals the gradient of the mean loss over the whole effective batch. Pass sample
counts for a per-sample mean, token counts for a token-weighted mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .clip import ClipResult, clip_grad_norm_

__all__ = ["GradientAccumulator", "micro_batches_for"]


def micro_batches_for(effective_batch: int, micro_batch: int) -> int:
    """How many micro-batches of ``micro_batch`` make ``effective_batch`` (rounded up).

    Example:
        >>> micro_batches_for(1000, 64)
        16
    """
    for name, v in (("effective_batch", effective_batch), ("micro_batch", micro_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"Invalid {name}: {v!r} (must be an integer >= 1)")
    return math.ceil(effective_batch / micro_batch)


class GradientAccumulator:
    """Accumulate weighted micro-batch gradients, then step once on the exact mean.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        micro_batches: step after this many :meth:`backward` calls (or call :meth:`step` yourself).
        reduction: how each micro-batch loss was reduced: ``"mean"`` over its ``count``
            items (default) or ``"sum"``.
        max_norm: clip the averaged gradients to this norm before stepping (optional).
        scaler: a ``torch.amp.GradScaler`` to scale the losses with (optional).

    Example:
        >>> import torch
        >>> from descent.stability.accumulate import GradientAccumulator
        >>> model = torch.nn.Linear(3, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> acc = GradientAccumulator(opt, micro_batches=2)
        >>> x = torch.randn(7, 3)
        >>> for chunk in (x[:4], x[4:]):          # sizes 4 and 3
        ...     stepped = acc.backward(model(chunk).pow(2).mean(), count=len(chunk))
        >>> stepped, acc.steps
        (True, 1)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, micro_batches: int | None = None, *,
                 reduction: str = "mean", max_norm: float | None = None, scaler: Any = None) -> None:
        if micro_batches is not None and (isinstance(micro_batches, bool) or not isinstance(micro_batches, int)
                                          or micro_batches < 1):
            raise ValueError(f"Invalid micro_batches: {micro_batches!r} (must be an integer >= 1)")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid reduction: {reduction!r} (must be 'mean' or 'sum')")
        self.optimizer = optimizer
        self.micro_batches = micro_batches
        self.reduction = reduction
        self.max_norm = max_norm
        self.scaler = scaler
        self.total = 0.0
        self.pending = 0
        self.steps = 0
        self.last_norm: ClipResult | None = None

    def backward(self, loss: torch.Tensor, count: float = 1.0) -> bool:
        """Backpropagate one micro-batch whose loss covers ``count`` items (samples or tokens).

        Returns:
            True when this call completed ``micro_batches`` and the optimizer stepped.
        """
        if isinstance(count, torch.Tensor):
            count = float(count.item())
        if not count > 0 or not math.isfinite(count):
            raise ValueError(f"Invalid count: {count!r} (must be > 0)")
        weighted = loss * count if self.reduction == "mean" else loss
        (self.scaler.scale(weighted) if self.scaler is not None else weighted).backward()
        self.total += float(count)
        self.pending += 1
        if self.micro_batches is not None and self.pending >= self.micro_batches:
            self.step()
            return True
        return False

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def average_(self) -> float:
        """Divide the accumulated gradients by the total count (done by :meth:`step`); return the total."""
        total = self.total
        if total <= 0:
            raise RuntimeError("GradientAccumulator.step() before any backward()")
        grads = [p.grad for p in self._params()]
        if grads:
            torch._foreach_div_(grads, total)
        return total

    def step(self, zero_grad: bool = True) -> Any:
        """Average, (unscale and) clip, step the optimizer, reset. Returns the optimizer's return value."""
        self.average_()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_norm is not None:
            self.last_norm = clip_grad_norm_(self._params(), self.max_norm)
        if self.scaler is not None:
            out = self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            out = self.optimizer.step()
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        self.total, self.pending = 0.0, 0
        self.steps += 1
        return out
