"""Numba kernels for Adafactor (see :mod:`descent.kernels` and :func:`descent.functional.adafactor`).

A factored parameter, viewed as ``(rows, m)`` with ``rows = batch * n``, takes three
passes over the gradient: (1) row means of :math:`g^2+\\epsilon_1` with per-thread
column partial sums and :math:`\\sum\\theta^2`; (2) :math:`\\sum U^2` for the RMS clip;
(3) the update. A vector takes two. Means and norms are parallel sums, so results
agree with the torch expression to rounding (about 1e-15 relative in float64); the
sums may be reassociated (``fastmath={'reassoc'}``) so that they vectorize.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["adafactor_factored", "adafactor_vector"]

_OPTS = dict(parallel=True, cache=True, fastmath=False, nogil=True)
#: The three reduction kernels may reassociate sums (and only that), so they vectorize;
#: the update itself (``_apply``, ``_vec_apply``) keeps strict IEEE order.
_SUM_OPTS = dict(_OPTS, fastmath={"reassoc"})
_CHUNKS = 16


@njit(**_SUM_OPTS)
def _stats(p, g, row, partial, n, eps1, b2, c2):  # pragma: no cover - compiled
    rows, m = g.shape
    chunks = partial.shape[0]
    per = (rows + chunks - 1) // chunks
    psums = np.zeros(chunks)
    for c in prange(chunks):
        for r in range(c * per, min(rows, (c + 1) * per)):
            b = r // n
            s = 0.0
            ps = 0.0
            for j in range(m):
                x = g[r, j] * g[r, j] + eps1
                s += x
                partial[c, b * m + j] += x
                ps += np.float64(p[r, j]) * np.float64(p[r, j])
            row[r] = row[r] * b2 + g.dtype.type(s / m) * c2
            psums[c] += ps
    return psums.sum()


@njit(**_SUM_OPTS)
def _usum(g, rf, cf, n):  # pragma: no cover - compiled
    rows, m = g.shape
    total = 0.0
    for r in prange(rows):
        b = r // n
        s = 0.0
        for j in range(m):
            u = g[r, j] * rf[r] * cf[b * m + j]
            s += np.float64(u) * np.float64(u)
        total += s
    return total


@njit(**_OPTS)
def _apply(p, g, rf, cf, n, inv_clip, alpha, decay, mom, b1, c1, use_m):  # pragma: no cover
    rows, m = g.shape
    for r in prange(rows):
        b = r // n
        for j in range(m):
            u = g[r, j] * rf[r] * cf[b * m + j] / inv_clip * alpha
            if use_m:
                u = mom[r, j] * b1 + u * c1
                mom[r, j] = u
            p[r, j] = p[r, j] * decay - u


def adafactor_factored(p, g, row, col, mom, *, n, eps1, b2, c2, eps2, lr, clip, wd, b1, scale_parameter, sign):
    """One factored step on 2-D views ``p, g`` (``(rows, m)``); ``row``/``col`` flat views of R, C."""
    dt = p.dtype.type
    if sign < 0:
        g = -g
    rows, m = g.shape
    chunks = max(1, min(_CHUNKS, rows))  # fixed, so results do not depend on the thread count
    partial = np.zeros((chunks, col.size), dtype=p.dtype)
    psum = _stats(p, g, row, partial, n, dt(eps1), dt(b2), dt(c2))
    col *= dt(b2)
    col += (partial.sum(axis=0) / dt(n)) * dt(c2)
    mean = row.reshape(-1, n).mean(axis=1)
    rf = (row.reshape(-1, n) / mean[:, None]).reshape(-1)
    rf = dt(1.0) / np.sqrt(rf)
    cf = dt(1.0) / np.sqrt(col)
    rms_u = math.sqrt(_usum(g, rf, cf, n)) / math.sqrt(g.size)
    denom = max(1.0, rms_u / clip)
    alpha = lr * max(eps2, math.sqrt(psum) / math.sqrt(g.size)) if scale_parameter else lr
    decay = 1.0 - wd * alpha if wd != 0 else 1.0
    use_m = mom is not None
    mom2 = mom if use_m else np.zeros((1, 1), dtype=p.dtype)
    _apply(p, g, rf, cf, n, dt(denom), dt(alpha), dt(decay), mom2, dt(b1 or 0.0), dt(1 - (b1 or 0.0)), use_m)


@njit(**_SUM_OPTS)
def _vec_stats(p, g, v, eps1, b2, c2):  # pragma: no cover - compiled
    one = p.dtype.type(1.0)
    us = 0.0
    ps = 0.0
    for i in prange(p.size):
        vi = v[i] * b2 + (g[i] * g[i] + eps1) * c2
        v[i] = vi
        u = g[i] * (one / math.sqrt(vi))
        us += np.float64(u) * np.float64(u)
        ps += np.float64(p[i]) * np.float64(p[i])
    return us, ps


@njit(**_OPTS)
def _vec_apply(p, g, v, inv_clip, alpha, decay, mom, b1, c1, use_m):  # pragma: no cover - compiled
    one = p.dtype.type(1.0)
    for i in prange(p.size):
        u = g[i] * (one / math.sqrt(v[i])) / inv_clip * alpha
        if use_m:
            u = mom[i] * b1 + u * c1
            mom[i] = u
        p[i] = p[i] * decay - u


def adafactor_vector(p, g, v, mom, *, eps1, b2, c2, eps2, lr, clip, wd, b1, scale_parameter, sign):
    """One unfactored step on flat views ``p, g, v`` (and the momentum ``mom`` or None)."""
    dt = p.dtype.type
    if sign < 0:
        g = -g
    usum, psum = _vec_stats(p, g, v, dt(eps1), dt(b2), dt(c2))
    denom = max(1.0, math.sqrt(usum) / math.sqrt(p.size) / clip)
    alpha = lr * max(eps2, math.sqrt(psum) / math.sqrt(p.size)) if scale_parameter else lr
    decay = 1.0 - wd * alpha if wd != 0 else 1.0
    use_m = mom is not None
    mom2 = mom if use_m else np.zeros(1, dtype=p.dtype)
    _vec_apply(p, g, v, dt(denom), dt(alpha), dt(decay), mom2, dt(b1 or 0.0), dt(1 - (b1 or 0.0)), use_m)
