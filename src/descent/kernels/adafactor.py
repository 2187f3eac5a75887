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

from .multi import view

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
def _factored_stats(p, g, row, colpart, eps1, b2, c2):  # pragma: no cover - compiled
    """Row update of a block of rows ``g`` (2-D), column partial sums; returns sum p^2.

    Row sums are accumulated in the dtype (vector partial sums), the column partials in
    float64, four rows at a time (one float64 addition per four elements).
    """
    nr, m = g.shape
    r = 0
    while r + 4 <= nr:
        a0 = a1 = a2 = a3 = g.dtype.type(0.0)
        for j in range(m):
            x0 = g[r, j] * g[r, j] + eps1
            x1 = g[r + 1, j] * g[r + 1, j] + eps1
            x2 = g[r + 2, j] * g[r + 2, j] + eps1
            x3 = g[r + 3, j] * g[r + 3, j] + eps1
            a0 += x0
            a1 += x1
            a2 += x2
            a3 += x3
            colpart[j] += np.float64((x0 + x1) + (x2 + x3))
        row[r] = row[r] * b2 + g.dtype.type(np.float64(a0) / m) * c2
        row[r + 1] = row[r + 1] * b2 + g.dtype.type(np.float64(a1) / m) * c2
        row[r + 2] = row[r + 2] * b2 + g.dtype.type(np.float64(a2) / m) * c2
        row[r + 3] = row[r + 3] * b2 + g.dtype.type(np.float64(a3) / m) * c2
        r += 4
    while r < nr:
        a = g.dtype.type(0.0)
        for j in range(m):
            x = g[r, j] * g[r, j] + eps1
            a += x
            colpart[j] += np.float64(x)
        row[r] = row[r] * b2 + g.dtype.type(np.float64(a) / m) * c2
        r += 1
    return _sumsq(p)


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
def _factored_pass_a(p, g, rows, colpart, blocks, k0, k1, n, m, eps1, b2, c2):  # pragma: no cover - compiled
    """Pass A over one factored tensor's blocks: row update, column partials (zeroed here), sum p^2."""
    tot_p = 0.0
    for k in range(k0, k1):
        lo, hi = blocks[k, 1], blocks[k, 2]
        r0 = lo // m
        part = colpart[k - k0, :m]
        part[:] = 0.0
        tot_p += _factored_stats(p[lo:hi], g[lo:hi].reshape(((hi - lo) // m, m)), rows[r0:r0 + (hi - lo) // m],
                                 part, eps1, b2, c2)
    return tot_p


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
def _tensor_step(ptrs, sizes, meta, blocks, k0, k1, t, like, b2s, lrs, eps1, eps2, clip, wd, b1, c1, use_m,
                 scale_parameter, sign, colpart, rf_all, cf_all):  # pragma: no cover - compiled
    """Every pass over one tensor (its blocks ``k0:k1``): statistics, factors, the sum of
    U^2, the clipping denominator and step size, the update. The tensor's later passes
    read it from cache."""
    dt = like.dtype.type
    n, m, size = meta[t, 0], meta[t, 1], sizes[t]
    p, g = view(ptrs[0, t], size, like), view(ptrs[1, t], size, like)
    mom = view(ptrs[5, t], size, like) if use_m else p
    b2 = dt(b2s[t])
    tot_u = 0.0
    if n > 0:
        batch = size // (n * m)
        rows = view(ptrs[2, t], size // m, like)
        rf, cf = rf_all[meta[t, 2]:meta[t, 2] + size // m], cf_all[meta[t, 3]:meta[t, 3] + batch * m]
        tot_p = _factored_pass_a(p, g, rows, colpart, blocks, k0, k1, n, m, dt(eps1), b2, dt(1.0) - b2)
        _factors(rows, view(ptrs[3, t], batch * m, like), _column_sums(colpart, blocks, k0, k1, n, m, batch), rf, cf,
                 n, m, b2, dt(1.0) - b2)
        for k in range(k0, k1):
            lo, hi = blocks[k, 1], blocks[k, 2]
            c0 = (lo // (n * m)) * m
            tot_u += _factored_usum(g[lo:hi].reshape(((hi - lo) // m, m)), rf[lo // m:], cf[c0:c0 + m])
    else:
        v = view(ptrs[4, t], size, like)
        tot_p = 0.0
        for k in range(k0, k1):
            lo, hi = blocks[k, 1], blocks[k, 2]
            _vector_variance(g[lo:hi], v[lo:hi], dt(eps1), b2, dt(1.0) - b2)
            us, ps = _vector_sums(p[lo:hi], g[lo:hi], v[lo:hi])
            tot_u += us
            tot_p += ps
    root = math.sqrt(size)
    denom = max(1.0, math.sqrt(tot_u) / root / clip)
    alpha = lrs[t] * max(eps2, math.sqrt(tot_p) / root) if scale_parameter else lrs[t]
    decay = 1.0 - wd * alpha if wd != 0 else 1.0
    for k in range(k0, k1):  # pass C
        lo, hi = blocks[k, 1], blocks[k, 2]
        if n > 0:
            c0 = (lo // (n * m)) * m
            shape = ((hi - lo) // m, m)
            _factored_apply(p[lo:hi].reshape(shape), g[lo:hi].reshape(shape), rf[lo // m:], cf[c0:c0 + m],
                            dt(alpha / denom), dt(decay), mom[lo:hi].reshape(shape), dt(b1), dt(c1), use_m, dt(sign))
        else:
            _vector_apply(p[lo:hi], g[lo:hi], view(ptrs[4, t], size, like)[lo:hi], dt(alpha / denom), dt(decay),
                          mom[lo:hi], dt(b1), dt(c1), use_m, dt(sign))


@njit(parallel=True, **_OPTS)
def adafactor_multi(ptrs, sizes, meta, blocks, first, bounds, like, b2s, lrs, eps1, eps2, clip, wd, b1, c1, use_m,
                    scale_parameter, sign, colpart, rf_all, cf_all):  # pragma: no cover - compiled
    """Adafactor over every tensor (see the module docstring), one parallel region per call:
    thread ``c`` steps the tensors ``bounds[c]:bounds[c + 1]`` one after the other
    (:func:`descent.kernels.multi.chunks`).

    ``ptrs`` rows: param, grad, row_var, col_var, variance, exp_avg (0 where absent);
    ``meta[t]`` = (n, m, row offset, column offset): rows per matrix (0 for a vector),
    columns, and where the tensor's factors start in ``rf_all``/``cf_all``; ``first``
    ``(T + 1,)`` each tensor's first block; ``b2s``/``lrs`` per tensor; ``colpart`` float64
    scratch of (threads, blocks of the largest factored tensor, columns) at least.
    """
    for c in prange(bounds.size - 1):
        for t in range(bounds[c], bounds[c + 1]):
            if first[t + 1] > first[t]:
                _tensor_step(ptrs, sizes, meta, blocks, first[t], first[t + 1], t, like, b2s, lrs, eps1, eps2, clip,
                             wd, b1, c1, use_m, scale_parameter, sign, colpart[c], rf_all, cf_all)
