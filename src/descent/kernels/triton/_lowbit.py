"""Triton multi-tensor kernels for 8- and 4-bit optimizer states: Adam/AdamW, Lion, SGD momentum.

The GPU counterpart of :mod:`descent.kernels.lowbit` (Numba, CPU): one launch per bucket,
each program steps ``ROWS`` whole quantization blocks of one tensor
(:func:`descent.kernels.triton._common.block_table` with a multiple of the block size). A
program reads the codes and absmax, rebuilds the state in float32 (``qmap[code] * absmax``),
updates parameter and state in :mod:`descent.functional`'s operation order (``tl.fma`` where
torch's CPU kernels fuse, as the Numba kernels), takes each block's new absmax (the largest
magnitude's bit pattern, so a NaN wins as in ``amax``) and writes the codes: the O(1) table of
:func:`descent.lowbit.maps.lookup` (equal to ``torch.bucketize`` on the midpoints), and for a
4-bit signed map the stochastic rounding of :func:`descent.lowbit.quant.encode` with the same
hashed thresholds (32-bit integer hash, same bits). So a state is the same whichever path
stepped it: the kernels, the torch reference, a shard. 4-bit codes are two to a byte, the even
element in the low nibble; a program handles the even and odd elements as two lanes.

Parameters may be float32, bfloat16 or float16 (math in float32, parameters rounded once to
nearest even on store); codes are uint8, absmax float32, every tensor contiguous. Launchers
take the Numba launchers' arguments (``steps`` per tensor, the functional's hyperparameters).
Hyperparameters are numbers here (low-bit states are not capturable).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from ...lowbit.maps import SHIFT, code_map, lookup
from ...lowbit.quant import block_size, codes_numel
from ..lowbit import _salts, adam_hp, adam_step_terms, lion_hp, sgd_hp
from ._common import (LAUNCH, TL, address_rows, block_table, cached_ints, pointers_key, positions, scalars, store,
                      to_device)

__all__ = ["adam_lowbit", "lion_lowbit", "sgd_lowbit", "BLOCK"]

#: Elements per program (whole quantization blocks: 8 of 256 elements, or 16 of 128).
BLOCK = 2048


@triton.jit
def _mix(h):
    """:func:`descent.lowbit.quant._mix` on uint32 (products wrap modulo 2**32, as its ``& 0xFFFFFFFF``)."""
    h = ((h >> 16) ^ h) * 0x45D9F3B
    h = ((h >> 16) ^ h) * 0x45D9F3B
    return (h >> 16) ^ h


@triton.jit
def _where(addr, t, T):
    """This program's tensor ``t``'s pointers: param/grad rows 0 and 1 of the address table."""
    return tl.load(addr + t), tl.load(addr + T + t)


@triton.jit
def _lanes(blocks, sizes, QB: tl.constexpr, ROWS: tl.constexpr, BITS: tl.constexpr):
    """``(t, n, rows, e, mask)``: tensor, its size, the ``ROWS`` block numbers and the ``(ROWS, W)``
    element indices of lane 0 (all elements for 8 bits, the even ones for 4; lane 1 is ``e + 1``)."""
    k = tl.program_id(0)
    t = tl.load(blocks + 2 * k)
    start = tl.load(blocks + 2 * k + 1)
    n = tl.load(sizes + t)
    rows = start // QB + tl.arange(0, ROWS)
    if BITS == 8:
        e = rows[:, None] * QB + tl.arange(0, QB)[None, :]
    else:
        e = rows[:, None] * QB + 2 * tl.arange(0, QB // 2)[None, :]
    return t, n, rows, e, e < n


@triton.jit
def _load(cp, ap, qmap, rows, e, n, mask, QB: tl.constexpr, BITS: tl.constexpr):
    """Dequantized float32 values of lanes 0 and 1 (lane 1 is lane 0 for 8 bits)."""
    scale = tl.load(ap + rows, mask=rows * QB < n, other=0.0)[:, None]
    if BITS == 8:
        c0 = tl.load(cp + e, mask=mask, other=0).to(tl.int32)
        c1 = c0
    else:
        byte = tl.load(cp + e // 2, mask=mask, other=0).to(tl.int32)
        c0 = byte & 15
        c1 = byte >> 4
    return tl.load(qmap + c0) * scale, tl.load(qmap + c1) * scale


@triton.jit
def _amax(x, mask):
    """Per row: the largest magnitude's bit pattern (an integer max: a NaN wins, as in ``amax``)."""
    bits = tl.where(mask, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0)
    return tl.max(bits, axis=1)


@triton.jit
def _code(x, qmap, thr, first, key_min, span, keyhash, pos, STOCHASTIC: tl.constexpr):
    """The code of normalized ``x``: the lookup table's nearest entry, or (4-bit signed map) the entry
    below or above against the hashed threshold of :func:`descent.lowbit.quant.dither`."""
    b = x.to(tl.uint32, bitcast=True)
    m = tl.maximum((b & 0x7FFFFFFF) >> SHIFT_, key_min) - key_min
    key = (tl.minimum(m, span - 1) + tl.where(b >= 0x80000000, span, 0)).to(tl.int32)
    c = tl.load(first + key).to(tl.int32) + (x > tl.load(thr + key)).to(tl.int32)
    if STOCHASTIC:
        lo = tl.minimum(tl.maximum(c - (tl.load(qmap + c) > x).to(tl.int32), 0), 14)
        below = tl.load(qmap + lo)
        frac = tl.div_rn(x - below, tl.load(qmap + lo + 1) - below)
        u = (_mix(keyhash[:, None] ^ _mix(pos)) >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2**-24
        c = lo + (frac > u).to(tl.int32)
    return c


SHIFT_ = tl.constexpr(SHIFT)


@triton.jit
def _save(x0, x1, cp, ap, qmap, thr, first, key_min, span, salt, rows, e, n, mask, QB: tl.constexpr,
          BITS: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Write the blocks' absmax and the codes of lanes ``x0``, ``x1`` (float32 values)."""
    big = _amax(x0, mask)
    if BITS == 4:
        big = tl.maximum(big, _amax(x1, mask & (e + 1 < n)))
    stored = big.to(tl.float32, bitcast=True)
    tl.store(ap + rows, stored, mask=rows * QB < n)
    scale = tl.where(stored > 0, stored, 1.0)[:, None]
    keyhash = (big.to(tl.uint32) >> 12) ^ salt
    pos = (e % QB).to(tl.uint32)
    c0 = _code(tl.div_rn(x0, scale), qmap, thr, first, key_min, span, keyhash, pos, STOCHASTIC)
    if BITS == 8:
        tl.store(cp + e, c0.to(tl.uint8), mask=mask)
    else:
        c1 = _code(tl.div_rn(x1, scale), qmap, thr, first, key_min, span, keyhash, pos + 1, STOCHASTIC)
        c1 = tl.where(e + 1 < n, c1, 0)
        tl.store(cp + e // 2, (c0 | (c1 << 4)).to(tl.uint8), mask=mask)


@triton.jit
def _adam_lane(pp, gp, e, mask, m, v, hp, step_size, bc2s, DT: tl.constexpr, LOW: tl.constexpr):
    """Adam on one lane (the Numba kernel's operation order); stores the parameter, returns ``m, v``."""
    decay, wd, w, b2 = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3)
    c2, eps, sign = tl.load(hp + 4), tl.load(hp + 5), tl.load(hp + 6)
    p = tl.load(pp + e, mask=mask, other=0.0).to(tl.float32)
    g = tl.fma(wd, p, tl.load(gp + e, mask=mask, other=0.0).to(tl.float32) * sign)  # grad.add(param, alpha=wd)
    m = tl.fma(w, g - m, m if LOW else g)  # exp_avg.lerp_(grad, 1 - beta1)
    v = tl.fma(c2 * g, g, v * b2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    store(pp + e, p * decay + tl.div_rn(step_size * m, tl.div_rn(tl.sqrt_rn(v), bc2s) + eps), mask, DT)
    return m, v


@triton.jit
def _adam_kernel(addr, sizes, blocks, T, hp, terms, salts, q1, thr1, first1, q2, thr2, first2, kmin1, span1,
                 kmin2, span2, DT: tl.constexpr, BITS: tl.constexpr, QB: tl.constexpr, ROWS: tl.constexpr,
                 LOW: tl.constexpr, STOCHASTIC: tl.constexpr):
    t, n, rows, e, mask = _lanes(blocks, sizes, QB, ROWS, BITS)
    pa, ga = _where(addr, t, T)
    pp, gp = pa.to(tl.pointer_type(DT)), ga.to(tl.pointer_type(DT))
    mc, ma = tl.load(addr + 2 * T + t).to(tl.pointer_type(tl.uint8)), tl.load(addr + 3 * T + t).to(
        tl.pointer_type(tl.float32))
    vc, va = tl.load(addr + 4 * T + t).to(tl.pointer_type(tl.uint8)), tl.load(addr + 5 * T + t).to(
        tl.pointer_type(tl.float32))
    step_size, bc2s, salt = tl.load(terms + t), tl.load(terms + T + t), tl.load(salts + t).to(tl.uint32)
    m0, m1 = _load(mc, ma, q1, rows, e, n, mask, QB, BITS)
    v0, v1 = _load(vc, va, q2, rows, e, n, mask, QB, BITS)
    m0, v0 = _adam_lane(pp, gp, e, mask, m0, v0, hp, step_size, bc2s, DT, LOW)
    if BITS == 4:
        m1, v1 = _adam_lane(pp, gp, e + 1, mask & (e + 1 < n), m1, v1, hp, step_size, bc2s, DT, LOW)
    _save(m0, m1, mc, ma, q1, thr1, first1, kmin1, span1, salt, rows, e, n, mask, QB, BITS, STOCHASTIC)
    _save(v0, v1, vc, va, q2, thr2, first2, kmin2, span2, salt, rows, e, n, mask, QB, BITS, False)


@triton.jit
def _lion_lane(pp, gp, e, mask, m, hp, DT: tl.constexpr):
    decay, lr, b1, c1 = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3)
    b2, c2, sign = tl.load(hp + 4), tl.load(hp + 5), tl.load(hp + 6)
    p = tl.load(pp + e, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gp + e, mask=mask, other=0.0).to(tl.float32) * sign
    c = m * b1 + g * c1
    s = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, c))
    store(pp + e, p * decay - s * lr, mask, DT)
    return m * b2 + g * c2


@triton.jit
def _sgd_lane(pp, gp, e, mask, b, hp, DT: tl.constexpr, NESTEROV: tl.constexpr, FIRST: tl.constexpr):
    lr, wd, mom, undamp, sign = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3), tl.load(hp + 4)
    p = tl.load(pp + e, mask=mask, other=0.0).to(tl.float32)
    d = tl.fma(wd, p, tl.load(gp + e, mask=mask, other=0.0).to(tl.float32) * sign)  # grad.add(param, alpha=wd)
    if FIRST:
        b = d
    else:
        b = tl.fma(undamp, d, b * mom)  # buf.mul_(mom).add_(d, alpha=1 - dampening)
    if NESTEROV:
        d = tl.fma(mom, b, d)
    else:
        d = b
    store(pp + e, tl.fma(-lr, d, p), mask, DT)
    return b


@triton.jit
def _one_state_kernel(addr, sizes, blocks, T, hp, salts, q1, thr1, first1, kmin1, span1, DT: tl.constexpr,
                      BITS: tl.constexpr, QB: tl.constexpr, ROWS: tl.constexpr, STOCHASTIC: tl.constexpr,
                      SGD: tl.constexpr, NESTEROV: tl.constexpr, FIRST: tl.constexpr):
    """Lion (``SGD`` False) or SGD momentum: one quantized state."""
    t, n, rows, e, mask = _lanes(blocks, sizes, QB, ROWS, BITS)
    pa, ga = _where(addr, t, T)
    pp, gp = pa.to(tl.pointer_type(DT)), ga.to(tl.pointer_type(DT))
    sc, sa = tl.load(addr + 2 * T + t).to(tl.pointer_type(tl.uint8)), tl.load(addr + 3 * T + t).to(
        tl.pointer_type(tl.float32))
    s0, s1 = _load(sc, sa, q1, rows, e, n, mask, QB, BITS)
    if SGD:
        s0 = _sgd_lane(pp, gp, e, mask, s0, hp, DT, NESTEROV, FIRST)
        if BITS == 4:
            s1 = _sgd_lane(pp, gp, e + 1, mask & (e + 1 < n), s1, hp, DT, NESTEROV, FIRST)
    else:
        s0 = _lion_lane(pp, gp, e, mask, s0, hp, DT)
        if BITS == 4:
            s1 = _lion_lane(pp, gp, e + 1, mask & (e + 1 < n), s1, hp, DT)
    _save(s0, s1, sc, sa, q1, thr1, first1, kmin1, span1, tl.load(salts + t).to(tl.uint32), rows, e, n, mask, QB,
          BITS, STOCHASTIC)


# ---------------------------------------------------------------------------------- launchers
@lru_cache(maxsize=32)
def _tables_on(values: tuple[float, ...], device: str) -> tuple[Tensor, Tensor, int, int, bool]:
    """``(thr, first, key_min, span, stochastic)`` of a map on ``device`` (built and copied once)."""
    t = lookup(torch.tensor(values, dtype=torch.float32))
    thr = torch.from_numpy(t.thr.copy()).to(device)
    first = torch.from_numpy(t.table.astype("int32")).to(device)
    return thr, first, int(t.key_min), int(t.span), len(values) == 16 and values[0] < 0


@lru_cache(maxsize=8)
def _shared_values(signed: bool, bits: int) -> tuple[float, ...]:
    return tuple(code_map(signed, bits).tolist())


def _values(q: Tensor) -> tuple[float, ...]:
    """A map's values: from the host copy for the shared maps (no device-to-host copy, no sync), else read."""
    bits = 8 if q.numel() == 256 else 4
    for signed in (True, False):
        if q is code_map(signed, bits, q.device):
            return _shared_values(signed, bits)
    return tuple(float(v) for v in q.detach().cpu().float().tolist())


def _maps(qmaps: Sequence[Tensor]) -> list:
    """Per map: the map tensor (moved to the device, float32) and its tables."""
    return [(q.to(dtype=torch.float32).contiguous(), *_tables_on(_values(q), str(q.device))) for q in qmaps]


def _check(params: Sequence[Tensor], grads: Sequence[Tensor], states: dict[str, Sequence[Tensor]],
           bits: int) -> list[int]:
    """Check the bucket (params/grads as the other Triton kernels; codes uint8, absmax float32, sizes)."""
    keep = positions(params, {"grads": grads}, same_shape=("grads",))
    qb = block_size(bits)
    for name, col in states.items():
        if len(col) != len(params):
            raise ValueError(f"Invalid {name}: {len(col)} tensors for {len(params)} parameters")
        absmax = name.endswith("_absmax")
        for i, s in enumerate(col):
            want = -(-params[i].numel() // qb) if absmax else codes_numel(params[i].numel(), bits)
            dtype = torch.float32 if absmax else torch.uint8
            if s.dtype != dtype or s.device != params[i].device or not s.is_contiguous() or s.numel() != want:
                raise ValueError(f"Invalid {name}[{i}]: {s.dtype}, {s.numel()} elements on {s.device} (need "
                                 f"{want} contiguous {dtype} on {params[i].device})")
    return keep


def _plan(params: Sequence[Tensor], cols: list[Sequence[Tensor]], keep: list[int]) -> list[Tensor]:
    sizes = [params[i].numel() for i in keep]
    picked = [[c[i] for i in keep] for c in cols]
    return cached_ints(("lowbit", BLOCK, pointers_key(*picked)), params[0].device,
                       lambda: [address_rows(picked, len(keep)), sizes, block_table(sizes, BLOCK)])


def adam_lowbit(params: list[Tensor], grads: list[Tensor], exp_avg: list[Tensor], exp_avg_absmax: list[Tensor],
                exp_avg_qmap: list[Tensor], exp_avg_sq: list[Tensor], exp_avg_sq_absmax: list[Tensor],
                exp_avg_sq_qmap: list[Tensor], *, steps: list[int], lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
                decoupled_weight_decay: bool = False) -> None:
    """Adam/AdamW with quantized moments on every tensor of a bucket, one launch (the arguments of
    :func:`descent.kernels.lowbit.adam_lowbit`; one map per moment for the bucket).

    Example:
        >>> import torch  # doctest: +SKIP
        >>> from descent.lowbit import QuantState
        >>> p = [torch.randn(4096, device="cuda")]
        >>> m, v = (QuantState.zeros(4096, s, 8, "cuda") for s in (True, False))
        >>> adam_lowbit(p, [torch.randn_like(p[0])], [m.codes], [m.absmax], [m.qmap], [v.codes], [v.absmax],
        ...             [v.qmap], steps=[1], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    """
    if amsgrad:
        raise ValueError("Invalid amsgrad=True: low-bit Adam states do not support AMSGrad")
    if not params:
        return
    bits = 8 if exp_avg_qmap[0].numel() == 256 else 4
    keep = _check(params, grads, {"exp_avg": exp_avg, "exp_avg_absmax": exp_avg_absmax, "exp_avg_sq": exp_avg_sq,
                                  "exp_avg_sq_absmax": exp_avg_sq_absmax}, bits)
    if not keep:
        return
    dev = params[0].device
    addr, sizes, blocks = _plan(params, [params, grads, exp_avg, exp_avg_absmax, exp_avg_sq, exp_avg_sq_absmax], keep)
    step_size, bc2s = adam_step_terms([steps[i] for i in keep], lr, beta1, beta2)
    terms = to_device(torch.from_numpy(np.concatenate([step_size, bc2s])).float(), dev)  # rounded once, as Numba's
    salts = to_device(torch.from_numpy(_salts([steps[i] for i in keep]).astype("int64")), dev)
    hp = adam_hp(float, lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay)
    (q1, thr1, first1, k1, s1, stochastic), (q2, thr2, first2, k2, s2, _) = _maps([exp_avg_qmap[0],
                                                                                  exp_avg_sq_qmap[0]])
    _adam_kernel[(blocks.numel() // 2,)](
        addr, sizes, blocks, len(keep), scalars(hp[:2] + hp[3:], dev), terms, salts, q1, thr1, first1, q2, thr2, first2,
        k1, s1, k2, s2, DT=TL[params[0].dtype], BITS=bits, QB=block_size(bits), ROWS=BLOCK // block_size(bits),
        LOW=bool(hp[2]), STOCHASTIC=stochastic, **LAUNCH)


def _one_state(params: list[Tensor], grads: list[Tensor], codes: list[Tensor], absmax: list[Tensor], qmap: Tensor,
               name: str, hp: tuple, steps: Sequence[int] | None, **flags: bool) -> None:
    if not params:
        return
    bits = 8 if qmap.numel() == 256 else 4
    keep = _check(params, grads, {name: codes, name + "_absmax": absmax}, bits)
    if not keep:
        return
    dev = params[0].device
    addr, sizes, blocks = _plan(params, [params, grads, codes, absmax], keep)
    salts = _salts([0 if steps is None else steps[i] for i in keep]).astype("int64")
    (q1, thr1, first1, k1, s1, stochastic), = _maps([qmap])
    _one_state_kernel[(blocks.numel() // 2,)](
        addr, sizes, blocks, len(keep), scalars(hp, dev), to_device(torch.from_numpy(salts), dev), q1, thr1, first1, k1,
        s1, DT=TL[params[0].dtype], BITS=bits, QB=block_size(bits), ROWS=BLOCK // block_size(bits),
        STOCHASTIC=stochastic, **flags, **LAUNCH)


def lion_lowbit(params: list[Tensor], grads: list[Tensor], exp_avg: list[Tensor], exp_avg_absmax: list[Tensor],
                exp_avg_qmap: list[Tensor], *, lr: float, beta1: float, beta2: float, weight_decay: float = 0.0,
                maximize: bool = False, steps: Sequence[int] | None = None) -> None:
    """Lion with a quantized ``exp_avg`` on every tensor of a bucket, one launch (the arguments of
    :func:`descent.kernels.lowbit.lion_lowbit`; ``steps`` salt a 4-bit state's rounding, 0 without)."""
    hp = lion_hp(float, lr, beta1, beta2, weight_decay, maximize)
    _one_state(params, grads, exp_avg, exp_avg_absmax, exp_avg_qmap[0] if exp_avg_qmap else None, "exp_avg", hp,
               steps, SGD=False, NESTEROV=False, FIRST=False)


def sgd_lowbit(params: list[Tensor], grads: list[Tensor], momentum_buffer: list[Tensor],
               momentum_buffer_absmax: list[Tensor], momentum_buffer_qmap: list[Tensor], *, lr: float,
               momentum: float, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
               maximize: bool = False, first: bool = False, steps: Sequence[int] | None = None) -> None:
    """SGD with a quantized momentum buffer on every tensor of a bucket, one launch (the arguments of
    :func:`descent.kernels.lowbit.sgd_lowbit`; ``first``: the buffer becomes the gradient)."""
    lr_, wd, mom, undamp, sign, nesterov_ = sgd_hp(float, lr, momentum, dampening, weight_decay, nesterov, maximize)
    _one_state(params, grads, momentum_buffer, momentum_buffer_absmax,
               momentum_buffer_qmap[0] if momentum_buffer_qmap else None, "momentum_buffer",
               (lr_, wd, mom, undamp, sign), steps, SGD=True, NESTEROV=bool(nesterov_), FIRST=bool(first))
