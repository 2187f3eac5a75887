"""Numba multi-tensor kernel for Adafactor (see :mod:`descent.kernels` and :func:`descent.functional.adafactor`).

One call steps every tensor of a bucket in one parallel region: each thread takes a run
of whole tensors (:func:`descent.kernels.multi.chunks`) and makes three passes over each
tensor's blocks (:mod:`descent.kernels.multi`) before the next tensor:

A. factored tensors (viewed as ``(rows, m)``, blocks of whole rows inside one matrix of
   the batch): row means of :math:`g^2+\\epsilon_1` into ``row_var``, per-block column
   partial sums, :math:`\\sum\\theta^2`; vectors: the ``variance`` update,
   :math:`\\sum U^2` and :math:`\\sum\\theta^2`;
B. factored tensors: :math:`\\sum U^2` with the row and column factors made in between;
C. the update, with the clipping and the step size folded into one factor
   :math:`\alpha/d` per tensor (a multiplication per element where the functional divides
   and multiplies; the last bit may differ).

A tensor (at most a few MB in a GPT-shaped list) is small enough that passes B and C
read its gradient from cache; between the passes, the thread computes the tensor's
factors and scalars itself (no serial section, no barrier). Sums are
accumulated in the tensors' dtype within a block (vector partial sums), float64 per
block, added in block order, so results do not depend on the thread count; the sums may be
reassociated (``fastmath={'reassoc'}``) so that they vectorize.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .multi import large_mask, view

__all__ = ["adafactor_multi"]

_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
_SUM_OPTS = dict(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")


@njit(**_SUM_OPTS)
def _sumsq(x):  # pragma: no cover - compiled
    """sum x^2 accumulated in x's dtype (vector partial sums under ``reassoc``), as float64."""
    a = x.dtype.type(0.0)
    for i in range(x.size):
        a += x[i] * x[i]
    return np.float64(a)


@njit(**_SUM_OPTS)
def _row_stats(p, g, acc, eps1):  # pragma: no cover - compiled
    """One row: (sum of x = g^2 + eps1, sum p^2) in the dtype (vector partial sums); ``acc += x``."""
    a = g.dtype.type(0.0)
    s = g.dtype.type(0.0)
    for j in range(g.size):
        x = g[j] * g[j] + eps1
        a += x
        acc[j] += x
        s += p[j] * p[j]
    return a, s


@njit(**_SUM_OPTS)
def _factored_stats(p, g, row, colpart, eps1, b2, c2):  # pragma: no cover - compiled
    """Row update of a block of rows ``g`` (2-D), column partial sums; returns sum p^2.

    Row by row, each one loop over the row's ``g`` and ``p`` (the block is read as two
    contiguous streams: reading four rows at a time, as this once did, ran at half the
    memory bandwidth). Row sums and sum p^2 per row are in the dtype, the column sums in
    the dtype over four rows, then float64.
    """
    nr, m = g.shape
    acc = np.empty(m, dtype=g.dtype)
    rows_p = p.reshape((nr, m))
    sp = 0.0
    for r0 in range(0, nr, 4):
        acc[:] = 0.0
        for r in range(r0, min(nr, r0 + 4)):
            a, s = _row_stats(rows_p[r], g[r], acc, eps1)
            sp += np.float64(s)
            row[r] = row[r] * b2 + g.dtype.type(np.float64(a) / m) * c2
        for j in range(m):
            colpart[j] += np.float64(acc[j])
    return sp


@njit(**_SUM_OPTS)
def _factored_usum(g, rf, cf):  # pragma: no cover - compiled
    """sum U^2 of a block of rows, U = g * rf[r] * cf[j] (partial sums in the dtype per row)."""
    nr, m = g.shape
    s = 0.0
    for r in range(nr):
        fr = rf[r]
        a = g.dtype.type(0.0)
        for j in range(m):
            u = g[r, j] * fr * cf[j]
            a += u * u
        s += np.float64(a)
    return s


@njit(**_OPTS)
def _factored_apply(p, g, rf, cf, scale, decay, mom, b1, c1, use_m, sign):  # pragma: no cover
    """The update with ``scale = alpha / denom`` (one multiplication instead of a division per element)."""
    nr, m = g.shape
    for r in range(nr):
        fr = rf[r]
        for j in range(m):
            u = (g[r, j] * sign) * fr * cf[j] * scale
            if use_m:
                u = mom[r, j] * b1 + u * c1
                mom[r, j] = u
            p[r, j] = p[r, j] * decay - u


@njit(**_OPTS)
def _vector_variance(g, v, eps1, b2, c2):  # pragma: no cover - compiled
    for i in range(g.size):
        v[i] = v[i] * b2 + (g[i] * g[i] + eps1) * c2


@njit(**_SUM_OPTS)
def _vector_sums(p, g, v):  # pragma: no cover - compiled
    a = p.dtype.type(0.0)
    for i in range(p.size):
        u = g[i] / math.sqrt(v[i])
        a += u * u
    return np.float64(a), _sumsq(p)


@njit(**_OPTS)
def _vector_apply(p, g, v, scale, decay, mom, b1, c1, use_m, sign):  # pragma: no cover - compiled
    for i in range(p.size):
        u = (g[i] * sign) / math.sqrt(v[i]) * scale
        if use_m:
            u = mom[i] * b1 + u * c1
            mom[i] = u
        p[i] = p[i] * decay - u


@njit(**_OPTS)
def _factors(row, col, colsum, rf, cf, n, m, b2, c2):  # pragma: no cover - compiled
    """Column update from the summed partials, then the row and column factors of one tensor."""
    dt = row.dtype.type
    for i in range(col.size):
        col[i] = col[i] * b2 + dt(colsum[i] / n) * c2
        cf[i] = dt(1.0) / math.sqrt(col[i])
    for b in range(row.size // n):
        s = 0.0
        for r in range(b * n, (b + 1) * n):
            s += row[r]
        mean = dt(s / n)
        for r in range(b * n, (b + 1) * n):
            rf[r] = dt(1.0) / math.sqrt(row[r] / mean)


@njit(**_OPTS)
def _column_sums(colpart, blocks, k0, k1, n, m, batch):  # pragma: no cover - compiled
    """Each matrix's column sums of g^2 + eps1 from its blocks' partials (last block first)."""
    colsum = np.zeros(batch * m)
    for j in range(k1 - 1, k0 - 1, -1):
        off = (blocks[j, 1] // (n * m)) * m
        for c in range(m):
            colsum[off + c] += colpart[j - k0, c]
    return colsum


@njit(**_OPTS)
def _pass_a(ptrs, sizes, meta, blocks, t, k, k0, like, b2s, eps1, colpart):  # pragma: no cover - compiled
    """Pass A over block ``k`` of tensor ``t``: (sum U^2 (vectors; 0 for a factored block), sum p^2)."""
    dt = like.dtype.type
    n, m, size = meta[t, 0], meta[t, 1], sizes[t]
    lo, hi = blocks[k, 1], blocks[k, 2]
    p, g = view(ptrs[0, t], size, like)[lo:hi], view(ptrs[1, t], size, like)[lo:hi]
    b2 = dt(b2s[t])
    if n > 0:
        part = colpart[k - k0, :m]
        part[:] = 0.0
        r0 = lo // m
        rows = view(ptrs[2, t], size // m, like)[r0:r0 + (hi - lo) // m]
        return 0.0, _factored_stats(p, g.reshape(((hi - lo) // m, m)), rows, part, dt(eps1), b2, dt(1.0) - b2)
    v = view(ptrs[4, t], size, like)[lo:hi]
    _vector_variance(g, v, dt(eps1), b2, dt(1.0) - b2)
    return _vector_sums(p, g, v)


@njit(**_OPTS)
def _tensor_factors(ptrs, sizes, meta, blocks, t, k0, k1, like, b2s, colpart, rf_all, cf_all):  # pragma: no cover
    """Between passes A and B: the column update and the row and column factors of tensor ``t``."""
    dt = like.dtype.type
    n, m, size = meta[t, 0], meta[t, 1], sizes[t]
    batch = size // (n * m)
    b2 = dt(b2s[t])
    _factors(view(ptrs[2, t], size // m, like), view(ptrs[3, t], batch * m, like),
             _column_sums(colpart, blocks, k0, k1, n, m, batch), rf_all[meta[t, 2]:meta[t, 2] + size // m],
             cf_all[meta[t, 3]:meta[t, 3] + batch * m], n, m, b2, dt(1.0) - b2)


@njit(**_OPTS)
def _pass_b(ptrs, sizes, meta, blocks, t, k, like, rf_all, cf_all):  # pragma: no cover - compiled
    """Pass B over block ``k`` of a factored tensor: sum U^2."""
    n, m = meta[t, 0], meta[t, 1]
    lo, hi = blocks[k, 1], blocks[k, 2]
    c0 = meta[t, 3] + (lo // (n * m)) * m
    g = view(ptrs[1, t], sizes[t], like)[lo:hi].reshape(((hi - lo) // m, m))
    return _factored_usum(g, rf_all[meta[t, 2] + lo // m:], cf_all[c0:c0 + m])


@njit(**_OPTS)
def _step_size(size, tot_u, tot_p, lr, eps2, clip, wd, scale_parameter):  # pragma: no cover - compiled
    """(alpha / clipping denominator, decay) of one tensor, in float64."""
    root = math.sqrt(size)
    denom = max(1.0, math.sqrt(tot_u) / root / clip)
    alpha = lr * max(eps2, math.sqrt(tot_p) / root) if scale_parameter else lr
    decay = 1.0 - wd * alpha if wd != 0 else 1.0
    return alpha / denom, decay


@njit(**_OPTS)
def _pass_c(ptrs, sizes, meta, blocks, t, k, like, rf_all, cf_all, scale, decay, b1, c1, use_m,
            sign):  # pragma: no cover - compiled
    """Pass C over block ``k`` of tensor ``t``: the update (and momentum)."""
    dt = like.dtype.type
    n, m, size = meta[t, 0], meta[t, 1], sizes[t]
    lo, hi = blocks[k, 1], blocks[k, 2]
    p, g = view(ptrs[0, t], size, like)[lo:hi], view(ptrs[1, t], size, like)[lo:hi]
    mom = view(ptrs[5, t], size, like)[lo:hi] if use_m else p
    if n > 0:
        c0 = meta[t, 3] + (lo // (n * m)) * m
        shape = ((hi - lo) // m, m)
        _factored_apply(p.reshape(shape), g.reshape(shape), rf_all[meta[t, 2] + lo // m:], cf_all[c0:c0 + m],
                        dt(scale), dt(decay), mom.reshape(shape), dt(b1), dt(c1), use_m, dt(sign))
    else:
        _vector_apply(p, g, view(ptrs[4, t], size, like)[lo:hi], dt(scale), dt(decay), mom, dt(b1), dt(c1), use_m,
                      dt(sign))


@njit(**_OPTS)
def _tensor_step(ptrs, sizes, meta, blocks, k0, k1, t, like, b2s, lrs, eps1, eps2, clip, wd, b1, c1, use_m,
                 scale_parameter, sign, colpart, rf_all, cf_all):  # pragma: no cover - compiled
    """Every pass over one tensor (its blocks ``k0:k1``) on one thread; its later passes read
    it from cache. Sums are added in block order."""
    tot_u = 0.0
    tot_p = 0.0
    for k in range(k0, k1):
        us, ps = _pass_a(ptrs, sizes, meta, blocks, t, k, k0, like, b2s, eps1, colpart)
        tot_u += us
        tot_p += ps
    if meta[t, 0] > 0:
        _tensor_factors(ptrs, sizes, meta, blocks, t, k0, k1, like, b2s, colpart, rf_all, cf_all)
        for k in range(k0, k1):
            tot_u += _pass_b(ptrs, sizes, meta, blocks, t, k, like, rf_all, cf_all)
    scale, decay = _step_size(sizes[t], tot_u, tot_p, lrs[t], eps2, clip, wd, scale_parameter)
    for k in range(k0, k1):
        _pass_c(ptrs, sizes, meta, blocks, t, k, like, rf_all, cf_all, scale, decay, b1, c1, use_m, sign)


@njit(parallel=True, **_OPTS)
def adafactor_multi(ptrs, sizes, meta, blocks, first, large, bounds, like, b2s, lrs, eps1, eps2, clip, wd, b1, c1,
                    use_m, scale_parameter, sign, colpart, part, rf_all, cf_all, sums):  # pragma: no cover - compiled
    """Adafactor over every tensor (see the module docstring).

    One parallel region for the bulk of the bucket: thread ``c`` steps the tensors
    ``bounds[c]:bounds[c + 1]`` one after the other (:func:`descent.kernels.multi.chunks`);
    then each *large* tensor gets parallel loops over its blocks for passes A, B and C.

    ``ptrs`` rows: param, grad, row_var, col_var, variance, exp_avg (0 where absent);
    ``meta[t]`` = (n, m, row offset, column offset): rows per matrix (0 for a vector),
    columns, and where the tensor's factors start in ``rf_all``/``cf_all``; ``first``
    ``(T + 1,)`` each tensor's first block; ``large`` the large tensors; ``b2s``/``lrs`` per
    tensor; ``colpart`` float64 scratch of (threads, blocks of a tensor, columns) at least,
    ``part`` the same for the large tensors (blocks, columns); ``sums`` float64 scratch of
    (2, blocks of the largest large tensor).
    """
    if large.size < sizes.size:  # only large tensors: no region for the runs
        skip = large_mask(large, sizes.size)
        for c in prange(bounds.size - 1):
            for t in range(bounds[c], bounds[c + 1]):
                if first[t + 1] > first[t] and not skip[t]:
                    _tensor_step(ptrs, sizes, meta, blocks, first[t], first[t + 1], t, like, b2s, lrs, eps1, eps2,
                                 clip, wd, b1, c1, use_m, scale_parameter, sign, colpart[c], rf_all, cf_all)
    for i in range(large.size):
        t = large[i]
        k0, k1 = first[t], first[t + 1]
        for k in prange(k0, k1):
            us, ps = _pass_a(ptrs, sizes, meta, blocks, t, k, k0, like, b2s, eps1, part)
            sums[0, k - k0] = us
            sums[1, k - k0] = ps
        tot_u = 0.0
        tot_p = 0.0
        for k in range(k0, k1):
            tot_u += sums[0, k - k0]
            tot_p += sums[1, k - k0]
        if meta[t, 0] > 0:
            _tensor_factors(ptrs, sizes, meta, blocks, t, k0, k1, like, b2s, part, rf_all, cf_all)
            for k in prange(k0, k1):
                sums[0, k - k0] = _pass_b(ptrs, sizes, meta, blocks, t, k, like, rf_all, cf_all)
            for k in range(k0, k1):
                tot_u += sums[0, k - k0]
        scale, decay = _step_size(sizes[t], tot_u, tot_p, lrs[t], eps2, clip, wd, scale_parameter)
        for k in prange(k0, k1):
            _pass_c(ptrs, sizes, meta, blocks, t, k, like, rf_all, cf_all, scale, decay, b1, c1, use_m, sign)
