"""Numba multi-tensor kernel for Adafactor (see :mod:`descent.kernels` and :func:`descent.functional.adafactor`).

One call steps every tensor of a bucket, one wave of tensors at a time
(:mod:`descent.kernels.multi`), in three parallel passes over the wave's blocks:

A. factored tensors (viewed as ``(rows, m)``, blocks of whole rows inside one matrix of
   the batch): row means of :math:`g^2+\\epsilon_1` into ``row_var``, per-block column
   partial sums, :math:`\\sum\\theta^2`; vectors: the ``variance`` update,
   :math:`\\sum U^2` and :math:`\\sum\\theta^2`;
B. factored tensors: :math:`\\sum U^2` with the row and column factors made in between;
C. the update, with the clipping and the step size folded into one factor
   :math:`\alpha/d` per tensor (a multiplication per element where the functional divides
   and multiplies; the last bit may differ).

A wave is small enough that passes B and C read the gradient from cache. Sums are
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
def _wave_factors(ptrs, sizes, meta, blocks, w0, w1, like, b2s, colpart, psum, usum, tot_p, tot_u, rf_all,
                  cf_all):  # pragma: no cover - compiled
    """Between passes A and B, serially: per-tensor sums, column update, row/column factors."""
    dt = like.dtype.type
    for k in range(w0, w1):
        t = blocks[k, 0]
        n, m, size = meta[t, 0], meta[t, 1], sizes[t]
        tot_p[t] += psum[k]
        if n == 0:
            tot_u[t] += usum[k]
        if n == 0 or (k + 1 < w1 and blocks[k + 1, 0] == t):
            continue
        batch = size // (n * m)
        colsum = np.zeros(batch * m)
        j = k
        while j >= w0 and blocks[j, 0] == t:
            off = (blocks[j, 1] // (n * m)) * m
            for c in range(m):
                colsum[off + c] += colpart[j - w0, c]
            j -= 1
        b2 = dt(b2s[t])
        _factors(view(ptrs[2, t], size // m, like), view(ptrs[3, t], batch * m, like), colsum,
                 rf_all[meta[t, 2]:meta[t, 2] + size // m], cf_all[meta[t, 3]:meta[t, 3] + batch * m],
                 n, m, b2, dt(1.0) - b2)


@njit(**_OPTS)
def _wave_scalars(sizes, meta, blocks, w0, w1, usum, tot_p, tot_u, lrs, eps2, clip, wd, scale_parameter, denom,
                  alpha, decay):  # pragma: no cover - compiled
    """Between passes B and C, serially: each tensor's clipping denominator, step size and decay."""
    for k in range(w0, w1):
        t = blocks[k, 0]
        if meta[t, 0] > 0:
            tot_u[t] += usum[k]
        if k + 1 < w1 and blocks[k + 1, 0] == t:
            continue
        root = math.sqrt(sizes[t])
        denom[t] = max(1.0, math.sqrt(tot_u[t]) / root / clip)
        alpha[t] = lrs[t] * max(eps2, math.sqrt(tot_p[t]) / root) if scale_parameter else lrs[t]
        decay[t] = 1.0 - wd * alpha[t] if wd != 0 else 1.0


@njit(**_OPTS)
def _zero_rows(a, rows):  # pragma: no cover - compiled
    for r in range(rows):
        for c in range(a.shape[1]):
            a[r, c] = 0.0


@njit(parallel=True, **_OPTS)
def adafactor_multi(ptrs, sizes, meta, blocks, waves, like, b2s, lrs, eps1, eps2, clip, wd, b1, c1, use_m,
                    scale_parameter, sign, colpart, rf_all, cf_all, sums):  # pragma: no cover - compiled
    """Adafactor over every wave (see the module docstring).

    ``ptrs`` rows: param, grad, row_var, col_var, variance, exp_avg (0 where absent);
    ``meta[t]`` = (n, m, row offset, column offset): rows per matrix (0 for a vector),
    columns, and where the tensor's factors start in ``rf_all``/``cf_all``; ``b2s``/``lrs``
    per tensor; ``colpart`` float64 scratch of (blocks per wave, columns) at least;
    ``sums`` float64 scratch of (7, max(blocks, tensors)), zeroed. Only the three passes
    are parallel loops: the serial work between them lives in plain functions, where no
    array expression becomes a parallel region of its own.
    """
    dt = like.dtype.type
    usum, psum, tot_u, tot_p, denom, alpha, decay = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6]
    for w in range(waves.size - 1):
        w0, w1 = waves[w], waves[w + 1]
        _zero_rows(colpart, w1 - w0)
        for k in prange(w0, w1):  # pass A
            t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            n, m, size = meta[t, 0], meta[t, 1], sizes[t]
            p = view(ptrs[0, t], size, like)[lo:hi]
            g = view(ptrs[1, t], size, like)[lo:hi]
            b2 = dt(b2s[t])
            if n > 0:
                r0 = lo // m
                row = view(ptrs[2, t], size // m, like)[r0:r0 + (hi - lo) // m]
                psum[k] = _factored_stats(p, g.reshape(((hi - lo) // m, m)), row, colpart[k - w0, :m], dt(eps1),
                                          b2, dt(1.0) - b2)
            else:
                v = view(ptrs[4, t], size, like)[lo:hi]
                _vector_variance(g, v, dt(eps1), b2, dt(1.0) - b2)
                us, ps = _vector_sums(p, g, v)
                usum[k] = us
                psum[k] = ps
        _wave_factors(ptrs, sizes, meta, blocks, w0, w1, like, b2s, colpart, psum, usum, tot_p, tot_u, rf_all,
                      cf_all)
        for k in prange(w0, w1):  # pass B
            t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            n, m = meta[t, 0], meta[t, 1]
            if n > 0:
                r0 = lo // m
                c0 = meta[t, 3] + (lo // (n * m)) * m
                g = view(ptrs[1, t], sizes[t], like)[lo:hi].reshape(((hi - lo) // m, m))
                usum[k] = _factored_usum(g, rf_all[meta[t, 2] + r0:], cf_all[c0:c0 + m])
        _wave_scalars(sizes, meta, blocks, w0, w1, usum, tot_p, tot_u, lrs, eps2, clip, wd, scale_parameter, denom,
                      alpha, decay)
        for k in prange(w0, w1):  # pass C
            t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            n, m, size = meta[t, 0], meta[t, 1], sizes[t]
            p = view(ptrs[0, t], size, like)[lo:hi]
            g = view(ptrs[1, t], size, like)[lo:hi]
            mom = view(ptrs[5, t], size, like)[lo:hi] if use_m else p
            if n > 0:
                r0 = lo // m
                c0 = meta[t, 3] + (lo // (n * m)) * m
                shape = ((hi - lo) // m, m)
                _factored_apply(p.reshape(shape), g.reshape(shape), rf_all[meta[t, 2] + r0:], cf_all[c0:c0 + m],
                                dt(alpha[t] / denom[t]), dt(decay[t]), mom.reshape(shape), dt(b1), dt(c1), use_m,
                                dt(sign))
            else:
                _vector_apply(p, g, view(ptrs[4, t], size, like)[lo:hi], dt(alpha[t] / denom[t]), dt(decay[t]),
                              mom, dt(b1), dt(c1), use_m, dt(sign))
