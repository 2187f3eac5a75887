"""Triton multi-tensor LAMB: moments and per-block norms, per-tensor trust ratios, apply.

Three launches per bucket, whatever the number of tensors:

1. per block: update ``exp_avg``/``exp_avg_sq``, form the direction
   :math:`u = \\hat m/(\\sqrt{\\hat v}+\\epsilon) + \\lambda\\theta` and write the block's float32
   partial sums :math:`\\sum\\theta^2, \\sum u^2`;
2. per tensor: add its blocks' partial sums in float64 (in block order, so the result does
   not depend on scheduling), round the norms to float32 as ``Tensor.norm`` returns
   them, and write the trust ratio and ``ratio * lr``;
3. per block: recompute :math:`u` from the stored moments and apply it (recomputing reads
   ``p, m, v`` where storing :math:`u` would write and read it back: the same traffic,
   no scratch).

With bfloat16/float16 state, both passes use the stored (rounded) moments, so the norm
and the step see the same direction. Against :func:`descent.functional.lamb` in
float32 the moments are equal bit for bit and the parameters agree to a few ulp (the
norms are sums in another order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (LAUNCH, TL, address_rows, block_table, cached_ints, exact, pointers_key, positions,
                      round_to, scalars, sign_of, to_device, wide)
from ._elementwise import _block

__all__ = ["BLOCK", "lamb", "bias_corrections"]

#: Elements per program.
BLOCK = 2048
#: Partial sums a ratio program adds per iteration.
_RBLOCK = 256


@triton.jit
def _pointers(addr, t, T, offs, DT: tl.constexpr):
    """The four typed pointers (param, grad, exp_avg, exp_avg_sq) of tensor ``t`` at ``offs``
    (one helper call: each nested call costs the interpreter a re-patch of triton.language)."""
    p = tl.load(addr + t).to(tl.pointer_type(DT)) + offs
    g = tl.load(addr + T + t).to(tl.pointer_type(DT)) + offs
    m = tl.load(addr + 2 * T + t).to(tl.pointer_type(DT)) + offs
    v = tl.load(addr + 3 * T + t).to(tl.pointer_type(DT)) + offs
    return p, g, m, v


@triton.jit
def _direction(p, m, v, bc1, bc2, eps, wd, DECAY: tl.constexpr):
    u = tl.div_rn(tl.div_rn(m, bc1), tl.sqrt_rn(tl.div_rn(v, bc2)) + eps)
    if DECAY:
        u = u + p * wd
    return u


@triton.jit
def _lamb_moments(addr, sizes, blocks, bcs, partial, T, hp, DT: tl.constexpr, BLOCK: tl.constexpr,
                  DECAY: tl.constexpr):
    t, offs, mask = _block(addr, sizes, blocks, BLOCK)
    b1, c1, b2, c2 = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3)
    eps, wd, sign = tl.load(hp + 4), tl.load(hp + 5), tl.load(hp + 6)
    pp, gp, mp, vp = _pointers(addr, t, T, offs, DT)
    p = tl.load(pp, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gp, mask=mask, other=0.0).to(tl.float32) * sign
    m = round_to(tl.load(mp, mask=mask).to(tl.float32) * b1 + g * c1, DT)
    v = round_to(tl.load(vp, mask=mask).to(tl.float32) * b2 + g * g * c2, DT)
    tl.store(mp, exact(m, DT), mask=mask)
    tl.store(vp, exact(v, DT), mask=mask)
    u = tl.where(mask, _direction(p, m, v, tl.load(bcs + 2 * t), tl.load(bcs + 2 * t + 1), eps, wd, DECAY), 0.0)
    k = tl.program_id(0)
    tl.store(partial + 2 * k, tl.sum(p * p, axis=0))
    tl.store(partial + 2 * k + 1, tl.sum(u * u, axis=0))


@triton.jit
def _lamb_ratios(partial, first, ratio, coef, hp, CLAMP: tl.constexpr, RBLOCK: tl.constexpr):
    t = tl.program_id(0)
    lr, clamp = tl.load(hp + 7), tl.load(hp + 8)
    lo = tl.load(first + t)
    hi = tl.load(first + t + 1)
    sp = tl.zeros((RBLOCK,), tl.float64)
    su = tl.zeros((RBLOCK,), tl.float64)
    for k0 in range(lo, hi, RBLOCK):
        k = k0 + tl.arange(0, RBLOCK)
        sp += tl.load(partial + 2 * k, mask=k < hi, other=0.0).to(tl.float64)
        su += tl.load(partial + 2 * k + 1, mask=k < hi, other=0.0).to(tl.float64)
    wn = tl.sqrt(tl.sum(sp, axis=0)).to(tl.float32)  # float64 sqrt is correctly rounded
    un = tl.sqrt(tl.sum(su, axis=0)).to(tl.float32)
    if CLAMP:
        wn = tl.minimum(wn, clamp)
    r = tl.where((wn > 0) & (un > 0), tl.div_rn(wn, tl.where(un > 0, un, 1.0)), 1.0)
    tl.store(ratio + t, r)
    tl.store(coef + t, r * lr)


@triton.jit
def _lamb_apply(addr, sizes, blocks, bcs, coef, T, hp, DT: tl.constexpr, BLOCK: tl.constexpr, DECAY: tl.constexpr):
    t, offs, mask = _block(addr, sizes, blocks, BLOCK)
    eps, wd = tl.load(hp + 4), tl.load(hp + 5)
    pp, _, mp, vp = _pointers(addr, t, T, offs, DT)
    p = tl.load(pp, mask=mask).to(tl.float32)
    m = tl.load(mp, mask=mask).to(tl.float32)
    v = tl.load(vp, mask=mask).to(tl.float32)
    u = _direction(p, m, v, tl.load(bcs + 2 * t), tl.load(bcs + 2 * t + 1), eps, wd, DECAY)
    tl.store(pp, exact(round_to(p - u * tl.load(coef + t), DT), DT), mask=mask)


def bias_corrections(steps: Sequence[int] | Sequence[Tensor], beta1: float | Tensor, beta2: float | Tensor,
                     enabled: bool, device: torch.device) -> Tensor:
    """``(T, 2)`` float32 ``1 - beta**step`` (ones when not ``enabled``) on ``device``.

    ``steps`` may be ints (computed in float64 on the host, as the functional does) or
    0-d step tensors on the device (computed there, without a host sync: capturable); the
    betas may be 0-d device tensors then.
    """
    if not enabled:
        return torch.ones((len(steps), 2), dtype=torch.float32, device=device)
    if steps and isinstance(steps[0], Tensor):
        t = torch.stack([s.reshape(()) for s in steps]).to(device=device, dtype=torch.float64)  # one kernel, no sync
        b1, b2 = wide(beta1, device), wide(beta2, device)
        return torch.stack([1 - torch.pow(b1, t), 1 - torch.pow(b2, t)], dim=1).float()  # no host copy
    t = torch.tensor([float(s) for s in steps], dtype=torch.float64)
    return to_device((1 - torch.tensor([beta1, beta2], dtype=torch.float64) ** t[:, None]).float(), device)


def lamb(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avg: Sequence[Tensor], exp_avg_sq: Sequence[Tensor],
         *, steps: Sequence[int] | Sequence[Tensor], lr: float | Tensor, beta1: float | Tensor,
         beta2: float | Tensor, eps: float | Tensor, weight_decay: float | Tensor = 0.0,
         clamp_value: float | None = None, bias_correction: bool = True, maximize: bool = False,
         capturable: bool = False) -> Tensor | None:
    """LAMB (:func:`descent.functional.lamb`) on every tensor of a bucket: three launches.

    Args:
        params, grads, exp_avg, exp_avg_sq: the bucket (see :mod:`descent.kernels.triton`).
        steps: per tensor, the step number after incrementing: ints, or 0-d step tensors
            on the device (then nothing is read back to the host).
        lr, beta1, beta2, eps, weight_decay, clamp_value, bias_correction, maximize: as
            in :func:`descent.functional.lamb`.
        capturable: make every scalar on the device (the hyperparameters may be 0-d device
            tensors; pass step tensors): no host sync, so a CUDA graph can capture the launches.
            Step tensors alone imply it.

    Returns:
        The trust ratios of the non-empty tensors (float32, on the device), or ``None``
        for a bucket with nothing to update.

    Example:
        >>> import torch  # doctest: +SKIP
        >>> z = lambda: [torch.ones(3, device="cuda")]
        >>> lamb(z(), z(), z(), z(), steps=[1], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6)
    """
    keep = positions(params, {"grads": grads, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
                     same_shape=("grads", "exp_avg", "exp_avg_sq"))
    if len(steps) != len(params):
        raise ValueError(f"Invalid steps: {len(steps)} values for {len(params)} parameters")
    if not keep:
        return None
    cols = [[c[i] for i in keep] for c in (params, grads, exp_avg, exp_avg_sq)]
    sizes = [params[i].numel() for i in keep]
    device, dt = params[0].device, TL[params[0].dtype]

    def build() -> list[list[int]]:
        blocks = block_table(sizes, BLOCK)
        first = [0]
        for n in sizes:
            first.append(first[-1] + -(-n // BLOCK))
        return [address_rows(cols, len(keep)), sizes, blocks, first]

    addr, size_t, blocks, first = cached_ints(("lamb", BLOCK, pointers_key(*cols)), device, build)
    nb, count = blocks.numel() // 2, len(keep)
    bcs = bias_corrections([steps[i] for i in keep], beta1, beta2, bias_correction, device)
    partial = torch.empty((nb, 2), dtype=torch.float32, device=device)
    ratio = torch.empty(count, dtype=torch.float32, device=device)
    coef = torch.empty(count, dtype=torch.float32, device=device)
    decay = isinstance(weight_decay, Tensor) or weight_decay != 0
    b1, b2 = wide(beta1, device), wide(beta2, device)
    on_device = capturable or isinstance(steps[keep[0]], Tensor)  # step tensors: nothing crosses to the device
    hp = scalars((b1, 1 - b1, b2, 1 - b2, eps, weight_decay, sign_of(maximize), lr,
                  0.0 if clamp_value is None else clamp_value), device, on_device)
    _lamb_moments[(nb,)](addr, size_t, blocks, bcs, partial, count, hp, DT=dt, BLOCK=BLOCK, DECAY=decay, **LAUNCH)
    _lamb_ratios[(count,)](partial, first, ratio, coef, hp, CLAMP=clamp_value is not None, RBLOCK=_RBLOCK, **LAUNCH)
    _lamb_apply[(nb,)](addr, size_t, blocks, bcs, coef, count, hp, DT=dt, BLOCK=BLOCK, DECAY=decay, **LAUNCH)
    return ratio
