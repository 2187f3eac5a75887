"""Multi-tensor (``torch._foreach_*``) launchers for the optimizers torch has no foreach path for.

These are the ``"foreach"`` backend of Lion, SophiaG, LAMB and Adafactor: a few
multi-tensor kernel launches per bucket on any device, with no host synchronisation
(norms, trust ratios and Adafactor's clipping stay on the device). They are what
``foreach=True`` (timm's and HF's flag) asks for, and the default on a GPU when no
Triton kernel runs the bucket. Each follows the launcher convention of
:mod:`descent.kernels.launch` and is tested against its :mod:`descent.functional`
function (to float rounding: torch's foreach ops may fuse a multiply-add).

Example:
    >>> import torch
    >>> from descent.kernels import foreach
    >>> p, m = [torch.ones(2)], [torch.zeros(2)]
    >>> foreach.lion(p, [torch.tensor([1.0, -1.0])], m, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0,
    ...              maximize=False)
    >>> p[0]
    tensor([0.9000, 1.1000])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["lion", "sophia", "lamb", "adafactor"]

Tensors = list[Tensor]
Maybe = list[Tensor | None]


def _signed(grads: Tensors, maximize: bool) -> Tensors:
    return torch._foreach_neg(grads) if maximize else grads


def _ema_(avg: Tensors, new: Tensors, beta: float) -> None:
    """``avg = beta * avg + (1 - beta) * new`` for every tensor."""
    torch._foreach_mul_(avg, beta)
    torch._foreach_add_(avg, new, alpha=1 - beta)


def lion(params: Tensors, grads: Tensors, exp_avg: Tensors, *, lr: float, beta1: float, beta2: float,
         weight_decay: float, maximize: bool) -> None:
    """:func:`descent.functional.lion` with multi-tensor ops."""
    grads = _signed(grads, maximize)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    c = torch._foreach_mul(exp_avg, beta1)
    torch._foreach_add_(c, grads, alpha=1 - beta1)
    torch._foreach_sign_(c)
    torch._foreach_add_(params, c, alpha=-lr)
    _ema_(exp_avg, grads, beta2)


def sophia(params: Tensors, grads: Tensors, exp_avg: Tensors, hessian: Tensors, *, lr: float, beta1: float,
           rho: float, bs: float, weight_decay: float, eps: float, maximize: bool) -> None:
    """:func:`descent.functional.sophia` with multi-tensor ops."""
    grads = _signed(grads, maximize)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    _ema_(exp_avg, grads, beta1)
    denom = torch._foreach_clamp_min(hessian, 0.0)
    torch._foreach_mul_(denom, rho * bs)
    torch._foreach_add_(denom, eps)
    ratio = torch._foreach_abs(exp_avg)
    torch._foreach_div_(ratio, denom)
    torch._foreach_clamp_max_(ratio, 1.0)
    torch._foreach_mul_(ratio, torch._foreach_sign(exp_avg))
    torch._foreach_add_(params, ratio, alpha=-lr)


def lamb(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, *, steps: list[int], lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float, clamp_value: float | None,
         bias_correction: bool, maximize: bool) -> None:
    """:func:`descent.functional.lamb` with multi-tensor ops; the trust ratios of the bucket are
    computed as one tensor on the device (no host synchronisation)."""
    grads = _signed(grads, maximize)
    _ema_(exp_avg, grads, beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
    bc1 = [1 - beta1**t if bias_correction else 1.0 for t in steps]
    bc2 = [1 - beta2**t if bias_correction else 1.0 for t in steps]
    u = torch._foreach_div(exp_avg, bc1)
    den = torch._foreach_div(exp_avg_sq, bc2)
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, eps)
    torch._foreach_div_(u, den)
    if weight_decay != 0:
        torch._foreach_add_(u, params, alpha=weight_decay)
    w = torch.stack(torch._foreach_norm(params))
    n = torch.stack(torch._foreach_norm(u))
    if clamp_value is not None:
        w = w.clamp(max=clamp_value)
    ok = (w > 0) & (n > 0)
    ratio = torch.where(ok, w / torch.where(ok, n, 1.0), 1.0) * -lr
    torch._foreach_mul_(u, list(ratio.to(params[0].dtype).unbind()))
    torch._foreach_add_(params, u)


def _rms(ts: Tensors) -> Tensor:
    """Root mean square of every tensor, as one device tensor."""
    return torch.stack(torch._foreach_norm(ts)) / torch.tensor([math.sqrt(t.numel()) for t in ts],
                                                              device=ts[0].device, dtype=ts[0].dtype)


def adafactor(params: Tensors, grads: Tensors, row_var: Maybe, col_var: Maybe, variance: Maybe, exp_avg: Maybe, *,
              steps: list[int], lr: float | None, relative_step: bool, warmup_init: bool, decay_rate: float,
              eps1: float, eps2: float, clip_threshold: float, beta1: float | None, weight_decay: float,
              scale_parameter: bool, maximize: bool) -> None:
    """:func:`descent.functional.adafactor` with multi-tensor ops for the elementwise parts.

    The row/column means of factored tensors are one reduction per tensor (torch has no
    multi-tensor mean over a dimension); everything else — the moment updates of vectors,
    the RMS clipping, the relative step and the decay — is multi-tensor, and nothing
    waits for the host.
    """
    from ..functional import adafactor_lr

    grads = _signed(grads, maximize)
    b2 = [1.0 - t**decay_rate for t in steps]
    g2 = torch._foreach_mul(grads, grads)
    torch._foreach_add_(g2, eps1)
    update: Tensors = []
    for i, g in enumerate(grads):
        if row_var[i] is not None and col_var[i] is not None:
            r, c = row_var[i], col_var[i]
            r.mul_(b2[i]).add_(g2[i].mean(dim=-1, keepdim=True), alpha=1 - b2[i])
            c.mul_(b2[i]).add_(g2[i].mean(dim=-2, keepdim=True), alpha=1 - b2[i])
            update.append(g * (r / r.mean(dim=-2, keepdim=True)).rsqrt_() * c.rsqrt())
        elif variance[i] is not None:
            v = variance[i]
            v.mul_(b2[i]).add_(g2[i], alpha=1 - b2[i])
            update.append(g * v.rsqrt())
        else:
            raise ValueError("adafactor: needs row_var and col_var (factored) or variance (vectors)")
    scale = (_rms(update) / clip_threshold).clamp_(min=1.0).reciprocal_()
    rho = torch.tensor([adafactor_lr(t, lr, relative_step=relative_step, warmup_init=warmup_init) for t in steps],
                       device=params[0].device, dtype=params[0].dtype)
    alpha = rho * _rms(params).clamp_(min=eps2) if scale_parameter else rho
    torch._foreach_mul_(update, list((scale * alpha).unbind()))
    if beta1 is not None:
        _ema_(exp_avg, update, beta1)
        update = exp_avg
    if weight_decay != 0:
        torch._foreach_mul_(params, list((1 - weight_decay * alpha).unbind()))
    torch._foreach_sub_(params, update)
