"""Numba multi-tensor kernels for Lion, Sophia-G, LAMB and RMSprop (see :mod:`descent.kernels`).

Each kernel steps every tensor of a bucket in one call (:mod:`descent.kernels.multi`):
``ptrs`` holds the addresses (one row per role: parameter, gradient, state...),
``plan`` the blocks. Scalars are passed in the arrays' dtype so float32 arithmetic stays
float32, and the elementwise loops run without ``fastmath`` in the torch expression's
order (with a fused multiply-add where torch's kernel uses one), so Lion's and Sophia's
results equal :mod:`descent.functional` bit for bit; where a square root is involved
(LAMB, RMSprop) they agree to the last bit or so, because torch 2.13's vectorized CPU
``sqrt`` is not correctly rounded and the kernels' is. Only
LAMB's sums of squares may be reassociated (``fastmath={'reassoc'}``) so that they
vectorize; they are in the tensors' dtype within a 1024-element piece of a block
(float32: vector partial sums of 16 terms), float64 across pieces and blocks, added in
order, so the result does not depend on the thread count. LAMB divides by the bias corrections through their
reciprocals (one division and one square root per element), so it agrees with the
functional to a few ulp rather than bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .multi import fma, large_mask, view

__all__ = ["lion_multi", "sophia_multi", "lamb_multi", "rmsprop_multi"]

_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
_SUM_OPTS = dict(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")


@njit(**_OPTS)
def _lion_block(p, g, m, decay, lr, b1, c1, b2, c2, sign):  # pragma: no cover - compiled
    """p <- p*decay - lr*sign(b1*m + c1*g'), m <- b2*m + c2*g' with g' = sign*g."""
    zero = p.dtype.type(0.0)
    one = p.dtype.type(1.0)
    for i in range(p.size):
        gi = g[i] * sign
        c = m[i] * b1 + gi * c1
        s = one if c > zero else (-one if c < zero else c)
        p[i] = p[i] * decay - s * lr
        m[i] = m[i] * b2 + gi * c2


@njit(parallel=True, **_OPTS)
def lion_multi(ptrs, sizes, blocks, like, decay, lr, b1, c1, b2, c2, sign):  # pragma: no cover - compiled
    """Lion over every block; ``ptrs`` rows: param, grad, exp_avg."""
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        _lion_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                    view(ptrs[2, t], n, like)[lo:hi], decay, lr, b1, c1, b2, c2, sign)


@njit(**_OPTS)
def _sophia_block(p, g, m, h, decay, lr, b1, c1, rho_bs, eps, sign):  # pragma: no cover - compiled
    """Sophia step: p <- p*decay - lr*sign(m)*min(|m|/(rho_bs*max(h,0)+eps), 1)."""
    zero = p.dtype.type(0.0)
    one = p.dtype.type(1.0)
    for i in range(p.size):
        mi = m[i] * b1 + (g[i] * sign) * c1
        m[i] = mi
        hi = h[i] if h[i] > zero else zero
        r = abs(mi) / (hi * rho_bs + eps)
        if r > one:
            r = one
        s = one if mi > zero else (-one if mi < zero else mi)
        p[i] = p[i] * decay - s * r * lr


@njit(parallel=True, **_OPTS)
def sophia_multi(ptrs, sizes, blocks, like, decay, lr, b1, c1, rho_bs, eps, sign):  # pragma: no cover
    """Sophia over every block; ``ptrs`` rows: param, grad, exp_avg, hessian."""
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        _sophia_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                      view(ptrs[2, t], n, like)[lo:hi], view(ptrs[3, t], n, like)[lo:hi],
                      decay, lr, b1, c1, rho_bs, eps, sign)


#: LAMB's loops over a block take 1024 elements at a time: the sums then read the direction the
#: first loop just wrote from L1 (five float32 arrays of 1024: 20 KiB of Zen 4's 32 KiB), and that
#: loop's division and square root overlap the memory traffic of the moments in the same loop
#: (measured on the 20.1M GPT-shaped list: a quarter of the kernel's time with the
#: moments, direction and sums as three loops over whole 16K blocks).
_SUB = 1024


@njit(**_OPTS)
def _lamb_moments_direction(p, g, m, v, u, b1, c1, b2, c2, r1, r2, eps, wd, sign):  # pragma: no cover - compiled
    """m <- b1*m + c1*g', v <- b2*v + c2*g'^2 (g' = sign*g) and the direction
    u = (m / bc1) / (sqrt(v / bc2) + eps) + wd * p, with the reciprocals r1, r2 of the bias
    corrections: one division and one square root per element instead of three divisions."""
    for i in range(p.size):
        gi = g[i] * sign
        mi = m[i] * b1 + gi * c1
        vi = v[i] * b2 + gi * gi * c2
        m[i] = mi
        v[i] = vi
        u[i] = (mi * r1) / (math.sqrt(vi * r2) + eps) + p[i] * wd


@njit(**_SUM_OPTS)
def _sumsq2(p, u):  # pragma: no cover - compiled
    """(sum p^2, sum u^2) of a block, accumulated in the dtype, returned as float64.

    With ``reassoc`` LLVM keeps vector partial sums (AVX-512: 16 lanes, unrolled), so a
    16K-element block adds a few hundred terms per float32 partial sum; a float64
    accumulator would convert every element and halve the vector width.
    """
    ap = p.dtype.type(0.0)
    au = p.dtype.type(0.0)
    for i in range(p.size):
        ap += p[i] * p[i]
        au += u[i] * u[i]
    return np.float64(ap), np.float64(au)


@njit(**_OPTS)
def _lamb_block(p, g, m, v, u, b1, c1, b2, c2, r1, r2, eps, wd, sign):  # pragma: no cover - compiled
    """Moments, direction and (sum p^2, sum u^2) of a block, :data:`_SUB` elements at a time
    (float32 partial sums per piece, float64 across pieces). The direction goes to
    ``u[:p.size]`` when ``u`` is that long, else to the first :data:`_SUB` elements of ``u``,
    reused (the caller recomputes it)."""
    sp = 0.0
    su = 0.0
    keep = u.size >= p.size
    for lo in range(0, p.size, _SUB):
        hi = min(p.size, lo + _SUB)
        w = u[lo:hi] if keep else u[:hi - lo]
        _lamb_moments_direction(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], w, b1, c1, b2, c2, r1, r2, eps, wd, sign)
        a, b = _sumsq2(p[lo:hi], w)
        sp += a
        su += b
    return sp, su


@njit(**_OPTS)
def _lamb_apply(p, u, coef):  # pragma: no cover - compiled
    for i in range(p.size):
        p[i] = p[i] - u[i] * coef


@njit(**_OPTS)
def _lamb_norms_direct(p, g, m, v, b1, c1, b2, c2, r1, r2, eps, wd, sign):  # pragma: no cover - compiled
    """Moments and (sum p^2, sum u^2) of a block without keeping u (see :func:`_lamb_block`)."""
    return _lamb_block(p, g, m, v, np.empty(min(p.size, _SUB), dtype=p.dtype), b1, c1, b2, c2, r1, r2, eps, wd,
                       sign)


@njit(**_OPTS)
def _lamb_apply_direct(p, m, v, r1, r2, eps, wd, coef):  # pragma: no cover - compiled
    for i in range(p.size):
        u = (m[i] * r1) / (math.sqrt(v[i] * r2) + eps) + p[i] * wd
        p[i] = p[i] - u * coef


@njit(**_OPTS)
def _lamb_ratio(sp, su, clamp, like):  # pragma: no cover - compiled
    """The trust ratio from the float64 sums of p^2 and u^2 (1.0 where a norm is 0); the norms
    are rounded to the tensor's dtype, as torch's norm() returns them."""
    wn = np.float64(like.dtype.type(math.sqrt(sp)))
    un = np.float64(like.dtype.type(math.sqrt(su)))
    if clamp >= 0 and wn > clamp:
        wn = clamp
    if wn > 0 and un > 0:
        return np.float64(like.dtype.type(wn / un))
    return 1.0


@njit(**_OPTS)
def _lamb_tensor(p, g, m, v, u_all, blocks, k0, k1, r1, r2, b1, c1, b2, c2, eps, wd, sign, lr, clamp,
                 like):  # pragma: no cover - compiled
    """Every pass over one tensor (blocks ``k0:k1``) on one thread; returns its trust ratio."""
    n = p.size
    store = n <= u_all.size
    sp = 0.0
    su = 0.0
    for k in range(k0, k1):
        lo, hi = blocks[k, 1], blocks[k, 2]
        if store:
            a, b = _lamb_block(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], u_all[lo:hi], b1, c1, b2, c2, r1, r2, eps, wd,
                               sign)
        else:
            a, b = _lamb_norms_direct(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], b1, c1, b2, c2, r1, r2, eps, wd, sign)
        sp += a
        su += b
    ratio = _lamb_ratio(sp, su, clamp, like)
    coef = like.dtype.type(ratio * lr)
    if store:
        _lamb_apply(p, u_all[:n], coef)
    else:
        _lamb_apply_direct(p, m, v, r1, r2, eps, wd, coef)
    return ratio


@njit(parallel=True, **_OPTS)
def lamb_multi(ptrs, sizes, blocks, first, large, bounds, like, scratch, bc1, bc2, b1, c1, b2, c2, eps, wd, sign, lr,
               clamp, ratio, sums):  # pragma: no cover - compiled
    """LAMB over every tensor: moments, direction and norms; trust ratio; apply.

    One parallel region for the bulk of the bucket: each thread takes a run of whole tensors
    (:func:`descent.kernels.multi.chunks`) and, tensor by tensor, updates the moments, writes
    the direction into its row of ``scratch`` and sums the block norms, forms the trust
    ratio, then applies the step while the tensor is still in cache. Each *large* tensor
    then gets two parallel loops over its blocks (norms, apply), recomputing the direction
    rather than storing it (nothing of it stays in cache anyway).

    ``ptrs`` rows: param, grad, exp_avg, exp_avg_sq; ``first`` (T + 1,) each tensor's first
    block; ``large`` (L,) the large tensors; ``bounds`` (C + 1,) tensor runs, one per
    thread; ``bc1``/``bc2`` per tensor; ``clamp`` < 0 means no clamp of the weight norm;
    ``ratio`` (T,) receives the trust ratios; ``sums`` float64 scratch of (blocks of the
    largest large tensor, 2). Block sums are float64, added in block order, so no result
    depends on the thread count.
    """
    one = like.dtype.type(1.0)
    if large.size < sizes.size:  # only large tensors: no region for the runs
        skip = large_mask(large, sizes.size)
        for c in prange(bounds.size - 1):
            for t in range(bounds[c], bounds[c + 1]):
                n = sizes[t]
                if n == 0 or skip[t]:
                    continue
                ratio[t] = _lamb_tensor(view(ptrs[0, t], n, like), view(ptrs[1, t], n, like),
                                        view(ptrs[2, t], n, like), view(ptrs[3, t], n, like), scratch[c], blocks,
                                        first[t], first[t + 1], one / bc1[t], one / bc2[t], b1, c1, b2, c2, eps, wd,
                                        sign, lr, clamp, like)
    for i in range(large.size):
        t = large[i]
        n, k0, k1 = sizes[t], first[t], first[t + 1]
        p, g = view(ptrs[0, t], n, like), view(ptrs[1, t], n, like)
        m, v = view(ptrs[2, t], n, like), view(ptrs[3, t], n, like)
        r1, r2 = one / bc1[t], one / bc2[t]
        for k in prange(k0, k1):
            lo, hi = blocks[k, 1], blocks[k, 2]
            a, b = _lamb_norms_direct(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], b1, c1, b2, c2, r1, r2, eps, wd, sign)
            sums[k - k0, 0] = a
            sums[k - k0, 1] = b
        sp = 0.0
        su = 0.0
        for k in range(k0, k1):
            sp += sums[k - k0, 0]
            su += sums[k - k0, 1]
        ratio[t] = _lamb_ratio(sp, su, clamp, like)
        coef = like.dtype.type(ratio[t] * lr)
        for k in prange(k0, k1):
            lo, hi = blocks[k, 1], blocks[k, 2]
            _lamb_apply_direct(p[lo:hi], m[lo:hi], v[lo:hi], r1, r2, eps, wd, coef)


@njit(**_OPTS)
def _rmsprop_block(p, g, v, ga, buf, lr, alpha, c, eps, wd, mom, centered, use_m, sign):  # pragma: no cover
    """RMSprop in torch's operation order: ``add(alpha=)``, ``addcmul`` and ``lerp`` are
    fused multiply-adds in torch's CPU kernels, ``addcdiv`` is not."""
    one = p.dtype.type(1.0)
    for i in range(p.size):
        gi = g[i] * sign
        if wd != 0:
            gi = fma(wd, p[i], gi)  # grad.add(param, alpha=wd)
        vi = fma(c * gi, gi, v[i] * alpha)  # v.mul_(alpha).addcmul_(g, g, value=c)
        v[i] = vi
        if centered:
            if c < 0.5:  # ga.lerp_(g, c)
                gai = fma(c, gi - ga[i], ga[i])
            else:
                gai = fma(c - one, gi - ga[i], gi)
            ga[i] = gai
            avg = math.sqrt(fma(-gai, gai, vi)) + eps  # v.addcmul(ga, ga, value=-1).sqrt_().add_(eps)
        else:
            avg = math.sqrt(vi) + eps
        if use_m:
            bi = buf[i] * mom + gi / avg  # buf.mul_(mom).addcdiv_(g, avg)
            buf[i] = bi
            p[i] = fma(-lr, bi, p[i])  # p.add_(buf, alpha=-lr)
        else:
            p[i] = p[i] + ((-lr) * gi) / avg  # p.addcdiv_(g, avg, value=-lr)


@njit(parallel=True, **_OPTS)
def rmsprop_multi(ptrs, sizes, blocks, like, lr, alpha, c, eps, wd, mom, sign, centered,
                  use_m):  # pragma: no cover - compiled
    """RMSprop over every block; ``ptrs`` rows: param, grad, square_avg, grad_avg, momentum_buffer (0 if unused)."""
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        p = view(ptrs[0, t], n, like)[lo:hi]
        ga = view(ptrs[3, t], n, like)[lo:hi] if centered else p
        buf = view(ptrs[4, t], n, like)[lo:hi] if use_m else p
        _rmsprop_block(p, view(ptrs[1, t], n, like)[lo:hi], view(ptrs[2, t], n, like)[lo:hi], ga, buf, lr, alpha,
                       c, eps, wd, mom, centered, use_m, sign)
