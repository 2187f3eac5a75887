"""Numba kernels for optimizers with 8-bit and 4-bit states: dequantize -> update -> quantize in one pass.

Each kernel steps every tensor of a bucket in one call over the plan of
:mod:`descent.kernels.multi` (its blocks are multiples of 256 elements, so they hold
whole quantization blocks). For each quantization block it reads the codes, rebuilds
the state in the parameter's dtype (``qmap[code] * absmax``), updates parameter and
state in the :mod:`descent.functional` operation order (fused multiply-adds where
torch's CPU kernels use them), keeps the new state in an L1-sized scratch buffer,
then writes the new absmax and codes. 8-bit codes are dequantized 64 at a time by AVX-512 VBMI
byte permutes (:mod:`descent.kernels.lowbit_decode`; scalar table loads on other CPUs and for 4-bit
codes). The codes of the 8-bit dynamic maps come from arithmetic
in one vectorized loop (:mod:`descent.kernels.lowbit_encode`); other 8-bit maps, and blocks where that
arithmetic is unsure, use the O(1) table: two loads from tables indexed by the value's float32
bits and one comparison (:func:`descent.lowbit.maps.lookup`), equal to ``torch.bucketize``; 4-bit
codes come from compares with the map's 16 entries in a loop that vectorizes, signed ones rounded
stochastically to a neighbouring entry (:func:`descent.kernels.lowbit_encode._encode4`, the rule of
:func:`descent.lowbit.quant.encode`). Each
quantization block runs as short loops over L1-resident scratch, inlined into one function
(dequantize; update; absmax; codes), so the update and the normalization vectorize.

Launchers follow the kernels convention: ``launch(params, grads, <one list per state
key>, steps=..., **hp)`` with ``hp`` the keyword hyperparameters of the functional.
Parameters must be contiguous float32/float64 CPU tensors; codes and absmax are the
state's plain tensors (:class:`descent.lowbit.QuantState`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numba import njit, prange

from . import addresses, bucket_plan, like
from .lowbit_decode import _decode, decoder
from .lowbit_encode import _OPTS, _arithmetic, _as_bits, _as_float, _encode4, _encode_fast, _magnitude, _vector
from .multi import fma, view
from ..lowbit.maps import SHIFT, lookup
from ..lowbit.quant import block_size, salt

__all__ = ["adam_lowbit", "lion_lowbit", "sgd_lowbit"]

_U8 = np.empty(1, dtype=np.uint8)
_F32 = np.empty(1, dtype=np.float32)


@njit(inline="always", **_OPTS)
def _code(codes, i, bits):  # pragma: no cover - compiled
    if bits == 8:
        return np.uint32(codes[i])
    return np.uint32((codes[i >> 1] >> ((i & 1) << 2)) & 15)


@njit(inline="always", **_OPTS)
def _dequantize(codes, off, n, dec, absmax, out, bits):  # pragma: no cover - compiled
    """``out[:n] = qmap[code] * absmax`` for the elements from ``off``: 8-bit codes by byte permutes
    (:func:`descent.kernels.lowbit_decode._decode`) where that was checked exact for the map
    (``dec`` = ``(qmap, planes, exact)``, :func:`_split`)."""
    qmap, planes, exact = dec
    if bits == 8 and exact:
        _decode(codes, off, n, qmap, planes, absmax, out)
        return
    for k in range(n):
        out[k] = qmap[_code(codes, off + k, bits)] * absmax


@njit(inline="always", **_OPTS)
def _amax(vals, n):  # pragma: no cover - compiled
    """max |vals[:n]|, as the largest of the magnitudes' bit patterns (integer max, which vectorizes;
    equal to the float max for finite and infinite values; a NaN wins, as in ``amax``)."""
    if vals.itemsize == 4:
        b4 = vals.view(np.int32)
        a4 = np.int32(0)
        for k in range(n):
            a4 = max(a4, b4[k] & np.int32(0x7FFFFFFF))
        return np.float64(_as_float(np.int32(a4)))
    b8 = vals.view(np.int64)
    a8 = np.int64(0)
    for k in range(n):
        a8 = max(a8, b8[k] & np.int64(0x7FFFFFFFFFFFFFFF))
    return _as_float(np.int64(a8))


@njit(inline="always", **_OPTS)
def _normalize(vals, n, scale, xs, keys, key_min, span):  # pragma: no cover - compiled
    """``xs[:n] = float32(vals / scale)`` and the lookup-table row of each (unsigned integer math on the
    float32 bits, so the loop vectorizes)."""
    lo, last, neg = np.uint32(key_min), np.uint32(span - 1), np.uint32(span)
    for k in range(n):
        x = np.float32(vals[k] / scale)
        xs[k] = x
        b = _as_bits(x)
        m = max((b & np.uint32(0x7FFFFFFF)) >> np.uint32(SHIFT), lo) - lo
        keys[k] = min(m, last) + (neg if b >= np.uint32(0x80000000) else np.uint32(0))


@njit(inline="always", **_OPTS)
def _quantize(vals, n, absmax, j, codes, off, bits, enc, stored):  # pragma: no cover - compiled
    """Write the absmax ``stored`` (block ``j``, :func:`_amax` of ``vals[:n]``) and, for 8-bit codes of a
    dynamic map with a finite absmax, the codes (elements from ``off``) by arithmetic in loops that
    vectorize (:func:`descent.kernels.lowbit_encode._encode_fast`). False when :func:`_quantize_table`
    must write the codes (other maps, 4 bits, a non-finite absmax, or a value the arithmetic is unsure of).
    ``enc`` = :func:`_split`'s second tuple (few arrays: each array passed to an inlined function costs
    a reference-count increment and decrement per block)."""
    cross, ten, zero, e, fast, xc, dlo, ften, ebase, ok = enc
    absmax[j] = stored
    if bits == 8 and fast and stored < np.float32(np.inf):
        scale = vals.dtype.type(stored) if stored > 0 else vals.dtype.type(1.0)
        return not _encode_fast(vals, n, scale, codes, off, cross, ten, zero, e, (xc, dlo, ften, ebase, ok))
    return False


@njit(**_OPTS)
def _quantize_table(vals, n, stored, codes, off, bits, table, scratch, salt):  # pragma: no cover - compiled
    """The codes of ``vals[:n]`` (absmax ``stored``) by the table ``(thr, first, key_min, span, qmap, mids)``:
    8 bits: normalize and table row from the bits (vectorizes), then one scalar loop of two table loads and
    a comparison per element (unsigned indices: no negative-index wrap-around code); 4 bits:
    :func:`descent.kernels.lowbit_encode._encode4`."""
    thr, first, key_min, span, qmap, mids = table
    xs, ci = scratch
    scale = vals.dtype.type(stored) if stored > 0 else vals.dtype.type(1.0)
    if bits == 8:
        _normalize(vals, n, scale, xs, ci, key_min, span)
        for k in range(n):
            key = ci[k]
            codes[off + k] = first[key] + np.uint8(xs[k] > thr[key])
        return
    for k in range(n):
        xs[k] = np.float32(vals[k] / scale)
    _encode4(xs, n, qmap, mids, stored, salt, ci)
    for k in range(0, n - 1, 2):
        codes[(off + k) >> 1] = ci[k] | (ci[k + 1] << np.uint32(4))
    if n & 1:
        codes[(off + n - 1) >> 1] = ci[n - 1]


@njit(inline="always", **_OPTS)
def _split(table):  # pragma: no cover - compiled
    """``(dequantize, encode, lookup)`` tables out of :func:`_tables`' tuple: ``(qmap, planes, exact)``,
    ``(cross, ten, zero, e, fast, xc, dlo, ften, ebase, usable)`` and ``(thr, first, key_min, span, qmap, mids)``."""
    return ((table[0], table[10], table[11]), (table[5], table[6], table[7], table[8], table[9], *table[12:17]),
            (table[1], table[2], table[3], table[4], table[0], table[17]))


@njit(inline="always", **_OPTS)
def _adam_math(p, g, m, v, n, decay, wd, low, w, b2, c2, eps, sign, step_size, bc2s):  # pragma: no cover
    """Adam on ``n`` elements held in ``m``/``v`` (torch's operation order); returns the new ``m``'s and
    ``v``'s :func:`_amax` as float32 (the largest magnitude bit patterns, kept in the same loop)."""
    am = av = _magnitude(p.dtype.type(0.0))
    for i in range(n):
        gi = fma(wd, p[i], g[i] * sign)  # grad.add(param, alpha=wd); wd = 0 when decoupled
        pi = p[i] * decay  # param.mul_(1 - lr * wd); decay = 1 unless decoupled
        mi = fma(w, gi - m[i], m[i] if low else gi)  # exp_avg.lerp_(grad, 1 - beta1)
        vi = fma(c2 * gi, gi, v[i] * b2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        p[i] = pi + (step_size * mi) / (math.sqrt(vi) / bc2s + eps)  # addcdiv_(value=-lr / bc1)
        m[i] = mi
        v[i] = vi
        am, av = max(am, _magnitude(mi)), max(av, _magnitude(vi))
    return np.float32(_as_float(am)), np.float32(_as_float(av))


@njit(**_OPTS)
def _adam_block(p, g, mc, ma, vc, va, t1, t2, qb, bits, hp, step_size, bc2s, salt):  # pragma: no cover - compiled
    """Adam on ``p`` (one plan block): ``hp`` = (decay, wd, low, w, b2, c2, eps, sign)."""
    decay, wd, low, w, b2, c2, eps, sign = hp
    sm = np.empty(qb, p.dtype)
    sv = np.empty(qb, p.dtype)
    scratch = (np.empty(qb, np.float32), np.empty(qb, np.uint32))
    (d1, e1, l1), (d2, e2, l2) = _split(t1), _split(t2)
    for j in range((p.size + qb - 1) // qb):
        s = j * qb
        n = min(qb, p.size - s)
        _dequantize(mc, s, n, d1, p.dtype.type(ma[j]), sm, bits)
        _dequantize(vc, s, n, d2, p.dtype.type(va[j]), sv, bits)
        am, av = _adam_math(p[s:s + n], g[s:s + n], sm, sv, n, decay, wd, low, w, b2, c2, eps, sign, step_size,
                            bc2s)
        if not _quantize(sm, n, ma, j, mc, s, bits, e1, am):  # else a call: few blocks
            _quantize_table(sm, n, ma[j], mc, s, bits, l1, scratch, salt)
        if not _quantize(sv, n, va, j, vc, s, bits, e2, av):  # else a call: few blocks
            _quantize_table(sv, n, va[j], vc, s, bits, l2, scratch, salt)


@njit(parallel=True, **_OPTS)
def adam_lowbit_multi(ptrs, sizes, blocks, like, t1, t2, qb, bits, hp, step_size, bc2s, salts):  # pragma: no cover
    """Adam over every block; ``ptrs`` rows: param, grad, m codes, m absmax, v codes, v absmax."""
    per = 1 if bits == 8 else 2
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        nc = (n + per - 1) // per
        nb = (n + qb - 1) // qb
        c0, c1 = lo // per, (hi + per - 1) // per
        b0, b1 = lo // qb, (hi + qb - 1) // qb
        cast = like.dtype.type
        _adam_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                    view(ptrs[2, t], nc, _U8)[c0:c1], view(ptrs[3, t], nb, _F32)[b0:b1],
                    view(ptrs[4, t], nc, _U8)[c0:c1], view(ptrs[5, t], nb, _F32)[b0:b1],
                    t1, t2, qb, bits, hp, cast(step_size[t]), cast(bc2s[t]), salts[t])


@njit(**_OPTS)
def _lion_math(p, g, m, n, decay, lr, b1, c1, b2, c2, sign):  # pragma: no cover - compiled
    zero = p.dtype.type(0.0)
    one = p.dtype.type(1.0)
    for i in range(n):
        gi = g[i] * sign
        c = m[i] * b1 + gi * c1
        sg = one if c > zero else (-one if c < zero else c)
        p[i] = p[i] * decay - sg * lr
        m[i] = m[i] * b2 + gi * c2


@njit(**_OPTS)
def _lion_block(p, g, mc, ma, t1, qb, bits, hp, salt):  # pragma: no cover - compiled
    """Lion on one plan block: ``hp`` = (decay, lr, b1, c1, b2, c2, sign)."""
    decay, lr, b1, c1, b2, c2, sign = hp
    sm = np.empty(qb, p.dtype)
    scratch = (np.empty(qb, np.float32), np.empty(qb, np.uint32))
    d1, e1, l1 = _split(t1)
    for j in range((p.size + qb - 1) // qb):
        s = j * qb
        n = min(qb, p.size - s)
        _dequantize(mc, s, n, d1, p.dtype.type(ma[j]), sm, bits)
        _lion_math(p[s:s + n], g[s:s + n], sm, n, decay, lr, b1, c1, b2, c2, sign)
        if not _quantize(sm, n, ma, j, mc, s, bits, e1, np.float32(_amax(sm, n))):  # else a call: few blocks
            _quantize_table(sm, n, ma[j], mc, s, bits, l1, scratch, salt)


@njit(parallel=True, **_OPTS)
def lion_lowbit_multi(ptrs, sizes, blocks, like, t1, qb, bits, hp, salts):  # pragma: no cover - compiled
    """Lion over every block; ``ptrs`` rows: param, grad, m codes, m absmax."""
    per = 1 if bits == 8 else 2
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        nc = (n + per - 1) // per
        nb = (n + qb - 1) // qb
        _lion_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                    view(ptrs[2, t], nc, _U8)[lo // per:(hi + per - 1) // per],
                    view(ptrs[3, t], nb, _F32)[lo // qb:(hi + qb - 1) // qb], t1, qb, bits, hp, salts[t])


@njit(**_OPTS)
def _sgd_math(p, g, b, n, lr, wd, mom, undamp, sign, nesterov, first):  # pragma: no cover - compiled
    for i in range(n):
        d = fma(wd, p[i], g[i] * sign)  # grad.add(param, alpha=wd)
        bi = d if first else fma(undamp, d, b[i] * mom)  # buf.mul_(mom).add_(d, alpha=1 - dampening)
        d = fma(mom, bi, d) if nesterov else bi
        p[i] = fma(-lr, d, p[i])
        b[i] = bi


@njit(**_OPTS)
def _sgd_block(p, g, bc, ba, t1, qb, bits, hp, first, salt):  # pragma: no cover - compiled
    """SGD with momentum on one plan block: ``hp`` = (lr, wd, mom, 1 - dampening, sign, nesterov)."""
    lr, wd, mom, undamp, sign, nesterov = hp
    sb = np.empty(qb, p.dtype)
    scratch = (np.empty(qb, np.float32), np.empty(qb, np.uint32))
    d1, e1, l1 = _split(t1)
    for j in range((p.size + qb - 1) // qb):
        s = j * qb
        n = min(qb, p.size - s)
        if not first:
            _dequantize(bc, s, n, d1, p.dtype.type(ba[j]), sb, bits)
        _sgd_math(p[s:s + n], g[s:s + n], sb, n, lr, wd, mom, undamp, sign, nesterov, first)
        if not _quantize(sb, n, ba, j, bc, s, bits, e1, np.float32(_amax(sb, n))):  # else a call: few blocks
            _quantize_table(sb, n, ba[j], bc, s, bits, l1, scratch, salt)


@njit(parallel=True, **_OPTS)
def sgd_lowbit_multi(ptrs, sizes, blocks, like, t1, qb, bits, hp, first, salts):  # pragma: no cover - compiled
    """SGD momentum over every block; ``ptrs`` rows: param, grad, buffer codes, buffer absmax."""
    per = 1 if bits == 8 else 2
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        nc = (n + per - 1) // per
        nb = (n + qb - 1) // qb
        _sgd_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                   view(ptrs[2, t], nc, _U8)[lo // per:(hi + per - 1) // per],
                   view(ptrs[3, t], nb, _F32)[lo // qb:(hi + qb - 1) // qb], t1, qb, bits, hp, first, salts[t])


# ---------------------------------------------------------------------------------- launchers
def _tables(qmap: torch.Tensor, dtype: np.ndarray) -> tuple:
    t = lookup(qmap)
    values = tuple(t.qmap.tolist())
    return (t.qmap.astype(dtype.dtype), t.thr, t.table, np.int32(t.key_min), np.int32(t.span), *_arithmetic(values),
            *decoder(values), *_vector(values), t.mids)


def _salts(steps: list[int]) -> np.ndarray:
    """:func:`descent.lowbit.quant.salt` of each tensor's step (hashed once per distinct step)."""
    by_step = {t: salt(t) for t in set(steps)}
    return np.array([by_step[t] for t in steps], dtype=np.uint64)


def _bits(qmap: torch.Tensor) -> int:
    return 8 if qmap.numel() == 256 else 4


def _launch(kernel, columns: list[list[torch.Tensor]], qmap: torch.Tensor, *extra) -> None:
    """Plan the bucket and call ``kernel(ptrs, sizes, blocks, like, tables, qb, bits, *extra)``."""
    params = columns[0]
    plan, dtype = bucket_plan(params), like(params[0])
    bits = _bits(qmap)
    kernel(addresses(*columns), plan.sizes, plan.blocks, dtype, _tables(qmap, dtype), np.int64(block_size(bits)),
           np.int64(bits), *extra)


# -------------------------------------------------------------- hyperparameters as the kernels take them
# (also used by descent.distributed._lowbit, which runs the same per-element math on shards)
def adam_step_terms(steps: list[int], lr: float, beta1: float, beta2: float) -> tuple[np.ndarray, np.ndarray]:
    """Per step number: Adam's signed step size ``-lr / (1 - beta1^s)`` and ``sqrt(1 - beta2^s)``."""
    step_size = np.array([-lr / (1 - beta1**s) for s in steps], dtype=np.float64)
    bc2s = np.array([(1 - beta2**s) ** 0.5 for s in steps], dtype=np.float64)
    return step_size, bc2s


def adam_hp(dt: Any, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, maximize: bool,
            decoupled_weight_decay: bool) -> tuple:
    """The per-element Adam kernel's hyperparameter tuple in dtype ``dt``."""
    decoupled = bool(decoupled_weight_decay) and weight_decay != 0
    c1 = dt(1 - beta1)
    return (dt(1 - lr * weight_decay) if decoupled else dt(1.0), dt(0.0 if decoupled_weight_decay else weight_decay),
            bool(c1 < 0.5), c1 if c1 < 0.5 else c1 - dt(1.0), dt(beta2), dt(1 - beta2), dt(eps),
            dt(-1.0 if maximize else 1.0))


def lion_hp(dt: Any, lr: float, beta1: float, beta2: float, weight_decay: float, maximize: bool) -> tuple:
    """The per-element Lion kernel's hyperparameter tuple in dtype ``dt``."""
    return (dt(1 - lr * weight_decay), dt(lr), dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2),
            dt(-1.0 if maximize else 1.0))


def sgd_hp(dt: Any, lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool,
           maximize: bool) -> tuple:
    """The per-element SGD-momentum kernel's hyperparameter tuple in dtype ``dt``."""
    return (dt(lr), dt(weight_decay), dt(momentum), dt(1 - dampening), dt(-1.0 if maximize else 1.0), bool(nesterov))


def adam_lowbit(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                exp_avg_absmax: list[torch.Tensor], exp_avg_qmap: list[torch.Tensor], exp_avg_sq: list[torch.Tensor],
                exp_avg_sq_absmax: list[torch.Tensor], exp_avg_sq_qmap: list[torch.Tensor], *, steps: list[int],
                lr: float, beta1: float, beta2: float, eps: float, weight_decay: float = 0.0, amsgrad: bool = False,
                maximize: bool = False, decoupled_weight_decay: bool = False) -> None:
    """Adam/AdamW with quantized ``exp_avg``/``exp_avg_sq`` (8- or 4-bit, from the maps' sizes), in place.

    Same hyperparameters as :func:`descent.functional.adam` (``amsgrad`` is not supported);
    ``steps`` are the step numbers after incrementing, one per tensor.
    """
    if amsgrad:
        raise ValueError("Invalid amsgrad=True: low-bit Adam states do not support AMSGrad")
    step_size, bc2s = adam_step_terms(steps, lr, beta1, beta2)
    hp = adam_hp(like(params[0]).dtype.type, lr, beta1, beta2, eps, weight_decay, maximize, decoupled_weight_decay)
    b = like(params[0])
    plan = bucket_plan(params)
    bits = _bits(exp_avg_qmap[0])
    adam_lowbit_multi(addresses(params, grads, exp_avg, exp_avg_absmax, exp_avg_sq, exp_avg_sq_absmax), plan.sizes,
                      plan.blocks, b, _tables(exp_avg_qmap[0], b), _tables(exp_avg_sq_qmap[0], b),
                      np.int64(block_size(bits)), np.int64(bits), hp, step_size, bc2s,
                      _salts(steps))


def lion_lowbit(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                exp_avg_absmax: list[torch.Tensor], exp_avg_qmap: list[torch.Tensor], *, lr: float, beta1: float,
                beta2: float, weight_decay: float = 0.0, maximize: bool = False,
                steps: list[int] | None = None) -> None:
    """Lion with a quantized ``exp_avg``, in place (hyperparameters of :func:`descent.functional.lion`;
    ``steps``, one per tensor, salt a 4-bit state's rounding thresholds: 0 without)."""
    hp = lion_hp(like(params[0]).dtype.type, lr, beta1, beta2, weight_decay, maximize)
    _launch(lion_lowbit_multi, [params, grads, exp_avg, exp_avg_absmax], exp_avg_qmap[0], hp,
            _salts(steps if steps is not None else [0] * len(params)))


def sgd_lowbit(params: list[torch.Tensor], grads: list[torch.Tensor], momentum_buffer: list[torch.Tensor],
               momentum_buffer_absmax: list[torch.Tensor], momentum_buffer_qmap: list[torch.Tensor], *, lr: float,
               momentum: float, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
               maximize: bool = False, first: bool = False, steps: list[int] | None = None) -> None:
    """SGD with a quantized momentum buffer, in place (hyperparameters of :func:`descent.functional.sgd`).

    ``first=True`` is the first step of these tensors: the buffer becomes the
    gradient, as torch initialises it (the codes passed in are overwritten). ``steps``: as
    :func:`lion_lowbit`'s.
    """
    hp = sgd_hp(like(params[0]).dtype.type, lr, momentum, dampening, weight_decay, nesterov, maximize)
    _launch(sgd_lowbit_multi, [params, grads, momentum_buffer, momentum_buffer_absmax], momentum_buffer_qmap[0],
            hp, bool(first), _salts(steps if steps is not None else [0] * len(params)))
# under torch.compile they run eagerly (dynamo made tensors of their numpy scalars, which Numba cannot type)
adam_lowbit, lion_lowbit, sgd_lowbit = (torch.compiler.disable(f) for f in (adam_lowbit, lion_lowbit, sgd_lowbit))
