"""Numba kernels for Lion, Sophia-G and LAMB (see :mod:`descent.kernels`).

Scalars are passed in the arrays' dtype so float32 arithmetic stays float32, and
``fastmath`` is off, so every elementwise result equals the torch expression in
:mod:`descent.functional` bit for bit in float64. (LAMB's norms are left to torch:
a Numba loop that also sums does not vectorize without fastmath.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["lion_kernel", "sophia_kernel", "lamb_direction_kernel"]

_OPTS = dict(parallel=True, cache=True, fastmath=False, nogil=True)


@njit(**_OPTS)
def lion_kernel(p, g, m, decay, lr, b1, c1, b2, c2, sign):  # pragma: no cover - compiled
    """p <- p*decay - lr*sign(b1*m + c1*g'), m <- b2*m + c2*g' with g' = sign*g."""
    zero = p.dtype.type(0.0)
    one = p.dtype.type(1.0)
    for i in prange(p.size):
        gi = g[i] * sign
        c = m[i] * b1 + gi * c1
        s = one if c > zero else (-one if c < zero else c)
        p[i] = p[i] * decay - s * lr
        m[i] = m[i] * b2 + gi * c2


@njit(**_OPTS)
def sophia_kernel(p, g, m, h, decay, lr, b1, c1, rho_bs, eps, sign):  # pragma: no cover - compiled
    """Sophia step: p <- p*decay - lr*sign(m)*min(|m|/(rho_bs*max(h,0)+eps), 1)."""
    zero = p.dtype.type(0.0)
    one = p.dtype.type(1.0)
    for i in prange(p.size):
        mi = m[i] * b1 + (g[i] * sign) * c1
        m[i] = mi
        hi = h[i] if h[i] > zero else zero
        r = abs(mi) / (hi * rho_bs + eps)
        if r > one:
            r = one
        s = one if mi > zero else (-one if mi < zero else mi)
        p[i] = p[i] * decay - s * r * lr


@njit(**_OPTS)
def lamb_direction_kernel(p, g, m, v, u, b1, c1, b2, c2, bc1, bc2, eps, wd, sign):  # pragma: no cover
    """Update m, v and write the direction u (no reduction, so the loop vectorizes)."""
    for i in prange(p.size):
        gi = g[i] * sign
        mi = m[i] * b1 + gi * c1
        vi = v[i] * b2 + gi * gi * c2
        m[i] = mi
        v[i] = vi
        u[i] = (mi / bc1) / (math.sqrt(vi / bc2) + eps) + p[i] * wd
