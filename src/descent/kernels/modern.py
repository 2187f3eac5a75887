"""Numba multi-tensor kernels for the optimizers of 2024: ADOPT, AdEMAMix, MARS and schedule-free SGD/AdamW.

The pattern of :mod:`descent.kernels.elementwise`: one call per device/dtype bucket over
the tensors' addresses and the block plan of :mod:`descent.kernels.multi`, scalars in the
tensors' dtype (so float32 stays float32), no ``fastmath``, ``error_model="numpy"``, and
torch's operation order with a fused multiply-add where torch's CPU kernel has one
(``add(alpha=)``, ``addcmul``, ``lerp``). Per-tensor scalars (bias corrections, ADOPT's
clip, AdEMAMix's warmed-up alpha and beta3) come as arrays computed in float64 as the
functional computes them, then rounded to the dtype. The kernels that take no square
root (schedule-free SGD) equal :mod:`descent.functional` bit for bit; the others agree
to the last bit or so (torch 2.13's vectorized CPU ``sqrt`` is not correctly rounded,
the kernels' is). MARS clips by the norm of each tensor: a first pass per wave stores
the corrected gradient and its per-block sum of squares, the block sums are added in
block order (float64), then a second pass applies the step, so the result does not
depend on the thread count; it agrees with the functional to a few ulp (another
summation order than ``torch.linalg.vector_norm``).

Each launcher has the signature its declaration checks (:class:`descent.optim._spec.Kernel`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from torch import Tensor

from . import addresses, bucket_plan, like, run_elementwise
from .multi import fma, view

__all__ = ["adopt", "ademamix", "mars", "schedule_free_sgd", "schedule_free_adamw"]

_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
_SUM_OPTS = dict(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")

Tensors = list[Tensor]


@njit(**_OPTS)
def _lerp(a, b, w, one):  # pragma: no cover - compiled
    """torch's ``a.lerp_(b, w)`` on CPU: two fused forms, chosen by the weight."""
    if abs(w) < 0.5:
        return fma(w, b - a, a)
    return fma(w - one, b - a, b)


# ------------------------------------------------------------------ ADOPT
@njit(**_OPTS)
def _adopt_block(p, g, m, v, first, clip, decay, wd, coupled, decoupled, use_clip, eps, w1, b2, c2, lr,
                 sign):  # pragma: no cover - compiled
    """ADOPT in the functional's order; ``first``: only v <- g^2 (the step-1 rule)."""
    one = p.dtype.type(1.0)
    for i in range(p.size):
        gi = g[i] * sign
        if coupled:
            gi = fma(wd, p[i], gi)  # grad.add(param, alpha=wd)
        if decoupled:
            p[i] = p[i] * decay  # param.mul_(1 - lr * wd)
        if first:
            v[i] = fma(gi, gi, v[i])  # exp_avg_sq.addcmul_(grad, grad)
            continue
        d = math.sqrt(v[i])
        if d < eps:  # sqrt().clamp_(min=eps)
            d = eps
        n = gi / d
        if use_clip:
            n = -clip if n < -clip else (clip if n > clip else n)
        mi = _lerp(m[i], n, w1, one)
        m[i] = mi
        p[i] = fma(-lr, mi, p[i])  # param.add_(exp_avg, alpha=-lr)
        v[i] = fma(c2 * gi, gi, v[i] * b2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


@njit(parallel=True, **_OPTS)
def adopt_multi(ptrs, sizes, blocks, like, first, clip, decay, wd, coupled, decoupled, use_clip, eps, w1, b2, c2, lr,
                sign):  # pragma: no cover - compiled
    """ADOPT over every block; ``ptrs`` rows: param, grad, exp_avg, exp_avg_sq; ``first``, ``clip`` per tensor."""
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        _adopt_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                     view(ptrs[2, t], n, like)[lo:hi], view(ptrs[3, t], n, like)[lo:hi], first[t], clip[t], decay,
                     wd, coupled, decoupled, use_clip, eps, w1, b2, c2, lr, sign)


# ------------------------------------------------------------------ AdEMAMix
@njit(**_OPTS)
def _ademamix_block(p, g, m, v, s, w1, w3, b2, c2, sbc2, bc1, alpha, eps, wd, lr, sign):  # pragma: no cover
    """m <- lerp(m, g, 1-b1), s <- lerp(s, g, 1-b3_t), v <- b2 v + c2 g^2, then
    p <- p - lr ((m / bc1 + alpha_t s) / (sqrt(v) / sqrt(bc2) + eps) + wd p)."""
    one = p.dtype.type(1.0)
    for i in range(p.size):
        gi = g[i] * sign
        mi = _lerp(m[i], gi, w1, one)
        m[i] = mi
        si = _lerp(s[i], gi, w3, one)
        s[i] = si
        vi = fma(c2 * gi, gi, v[i] * b2)
        v[i] = vi
        u = fma(alpha, si, mi / bc1) / (math.sqrt(vi) / sbc2 + eps)
        if wd != 0:
            u = fma(wd, p[i], u)
        p[i] = fma(-lr, u, p[i])


@njit(parallel=True, **_OPTS)
def ademamix_multi(ptrs, sizes, blocks, like, w3, sbc2, bc1, alpha, w1, b2, c2, eps, wd, lr,
                   sign):  # pragma: no cover - compiled
    """AdEMAMix over every block; ``ptrs`` rows: param, grad, exp_avg, exp_avg_sq, exp_avg_slow;
    ``w3`` (1 - beta3_t), ``sbc2``, ``bc1``, ``alpha`` (alpha_t) per tensor."""
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        _ademamix_block(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                        view(ptrs[2, t], n, like)[lo:hi], view(ptrs[3, t], n, like)[lo:hi],
                        view(ptrs[4, t], n, like)[lo:hi], w1, w3[t], b2, c2, sbc2[t], bc1[t], alpha[t], eps, wd, lr,
                        sign)


# ------------------------------------------------------------------ schedule-free
@njit(**_OPTS)
def _schedule_free_block(p, g, z, v, c, a, lr, wd, b2, c2, bc2, eps, adam, sign):  # pragma: no cover - compiled
    """y <- lerp(y, z, c) + a g', z <- z - lr g' with g' = g + wd y (SGD) or
    g / (sqrt(v / bc2) + eps) + wd y (AdamW, after v <- b2 v + c2 g^2)."""
    one = p.dtype.type(1.0)
    for i in range(p.size):
        gi = g[i] * sign
        if adam:
            vi = fma(c2 * gi, gi, v[i] * b2)
            v[i] = vi
            gi = gi / (math.sqrt(vi / bc2) + eps)  # exp_avg_sq.div(bc2).sqrt_().add_(eps)
        if wd != 0:
            gi = fma(wd, p[i], gi)
        zi = z[i]
        p[i] = fma(a, gi, _lerp(p[i], zi, c, one))  # param.lerp_(z, c).add_(g, alpha=a)
        z[i] = fma(-lr, gi, zi)  # z.sub_(g, alpha=lr)


@njit(parallel=True, **_OPTS)
def schedule_free_multi(ptrs, sizes, blocks, like, c, a, lr, wd, b2, c2, bc2, eps, sign,
                        adam):  # pragma: no cover - compiled
    """Schedule-free SGD (``adam`` False) or AdamW over every block; ``ptrs`` rows: param, grad, z, exp_avg_sq."""
    for k in prange(blocks.shape[0]):
        t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
        n = sizes[t]
        p = view(ptrs[0, t], n, like)[lo:hi]
        v = view(ptrs[3, t], n, like)[lo:hi] if adam else p
        _schedule_free_block(p, view(ptrs[1, t], n, like)[lo:hi], view(ptrs[2, t], n, like)[lo:hi], v, c, a, lr, wd,
                             b2, c2, bc2, eps, adam, sign)


# ------------------------------------------------------------------ MARS
@njit(**_OPTS)
def _mars_correct(g, last, k, sign):  # pragma: no cover - compiled
    """last <- (g' - last) * k + g' (the corrected gradient, kept where g_{t-1} was)."""
    for i in range(g.size):
        gi = g[i] * sign
        last[i] = (gi - last[i]) * k + gi


@njit(**_SUM_OPTS)
def _sumsq(x):  # pragma: no cover - compiled
    """sum x^2 of a block in the dtype (vector partial sums, see elementwise._sumsq2), as float64."""
    acc = x.dtype.type(0.0)
    for i in range(x.size):
        acc += x[i] * x[i]
    return np.float64(acc)


@njit(**_OPTS)
def _mars_apply(p, g, m, v, last, norm, clip, w1, b2, c2, sbc2, bc1, eps, wd, lr, sign):  # pragma: no cover
    one = p.dtype.type(1.0)
    for i in range(p.size):
        ci = last[i] / norm if clip else last[i]  # c.div_(norm) when norm > 1
        mi = _lerp(m[i], ci, w1, one)
        m[i] = mi
        vi = fma(c2 * ci, ci, v[i] * b2)
        v[i] = vi
        u = (mi / bc1) / (math.sqrt(vi) / sbc2 + eps)
        if wd != 0:
            u = fma(wd, p[i], u)
        p[i] = fma(-lr, u, p[i])
        last[i] = g[i] * sign


@njit(parallel=True, **_OPTS)
def mars_multi(ptrs, sizes, blocks, waves, like, sbc2, bc1, k_corr, w1, b2, c2, eps, wd, lr, sign, sums, tot,
               norms):  # pragma: no cover - compiled
    """MARS over every wave: corrected gradients and block sums; per-tensor norms; apply.

    ``ptrs`` rows: param, grad, exp_avg, exp_avg_sq, last_grad; ``sbc2``, ``bc1`` per tensor.
    Scratch from the caller (no allocation in a parallel function): ``sums`` (B,), ``tot``
    (T,) float64 zeros and ``norms`` (T,) in the dtype.
    """
    one = like.dtype.type(1.0)
    for w in range(waves.size - 1):
        for k in prange(waves[w], waves[w + 1]):
            t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            n = sizes[t]
            last = view(ptrs[4, t], n, like)[lo:hi]
            _mars_correct(view(ptrs[1, t], n, like)[lo:hi], last, k_corr, sign)
            sums[k] = _sumsq(last)
        for k in range(waves[w], waves[w + 1]):
            tot[blocks[k, 0]] += sums[k]
        for k in range(waves[w], waves[w + 1]):
            t = blocks[k, 0]
            norms[t] = like.dtype.type(math.sqrt(tot[t]))  # torch's norm() is in the dtype
        for k in prange(waves[w], waves[w + 1]):
            t, lo, hi = blocks[k, 0], blocks[k, 1], blocks[k, 2]
            n = sizes[t]
            _mars_apply(view(ptrs[0, t], n, like)[lo:hi], view(ptrs[1, t], n, like)[lo:hi],
                        view(ptrs[2, t], n, like)[lo:hi], view(ptrs[3, t], n, like)[lo:hi],
                        view(ptrs[4, t], n, like)[lo:hi], norms[t], norms[t] > one, w1, b2, c2, sbc2[t], bc1[t], eps,
                        wd, lr, sign)


# ------------------------------------------------------------------ launchers
def _sign(maximize: bool) -> float:
    return -1.0 if maximize else 1.0


def _per_tensor(dtype: np.ndarray, values: list[float]) -> np.ndarray:
    """Per-tensor scalars computed in float64 (as the functional does), rounded to the dtype."""
    return np.asarray(values, dtype=np.float64).astype(dtype.dtype)


def adopt(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, *, steps: list[int], lr: float,
          beta1: float, beta2: float, eps: float, weight_decay: float, decouple: bool, clip_exponent: float | None,
          maximize: bool) -> None:
    """:func:`descent.functional.adopt` over a bucket (:func:`adopt_multi`)."""
    plan, dtype = bucket_plan(params), like(params[0])
    dt = dtype.dtype.type
    clip = _per_tensor(dtype, [0.0 if clip_exponent is None else t**clip_exponent for t in steps])
    first = np.asarray([t == 1 for t in steps])
    wd = float(weight_decay)
    adopt_multi(addresses(params, grads, exp_avg, exp_avg_sq), plan.sizes, plan.blocks, dtype, first, clip,
                dt(1 - lr * wd), dt(wd), wd != 0 and not decouple, wd != 0 and decouple, clip_exponent is not None,
                dt(eps), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(lr), dt(_sign(maximize)))


def ademamix(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, exp_avg_slow: Tensors, *,
             steps: list[int], lr: float, beta1: float, beta2: float, beta3: float, alpha: float, eps: float,
             weight_decay: float, warmup: int | None, maximize: bool) -> None:
    """:func:`descent.functional.ademamix` over a bucket (:func:`ademamix_multi`)."""
    from ..functional import ademamix_schedule

    plan, dtype = bucket_plan(params), like(params[0])
    dt = dtype.dtype.type
    sched = [ademamix_schedule(t, alpha=alpha, beta1=beta1, beta3=beta3, warmup=warmup) for t in steps]
    ademamix_multi(addresses(params, grads, exp_avg, exp_avg_sq, exp_avg_slow), plan.sizes, plan.blocks, dtype,
                   _per_tensor(dtype, [1 - b3 for _, b3 in sched]),
                   _per_tensor(dtype, [math.sqrt(1 - beta2**t) for t in steps]),
                   _per_tensor(dtype, [1 - beta1**t for t in steps]), _per_tensor(dtype, [a for a, _ in sched]),
                   dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay), dt(lr), dt(_sign(maximize)))


def mars(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, last_grad: Tensors, *,
         steps: list[int], lr: float, beta1: float, beta2: float, eps: float, gamma: float, weight_decay: float,
         maximize: bool) -> None:
    """:func:`descent.functional.mars` over a bucket: corrected gradients and norms, then the step
    (:func:`mars_multi`)."""
    plan, dtype = bucket_plan(params), like(params[0])
    dt = dtype.dtype.type
    mars_multi(addresses(params, grads, exp_avg, exp_avg_sq, last_grad), plan.sizes, plan.blocks, plan.waves, dtype,
               _per_tensor(dtype, [math.sqrt(1 - beta2**t) for t in steps]),
               _per_tensor(dtype, [1 - beta1**t for t in steps]), dt(gamma * beta1 / (1 - beta1)), dt(1 - beta1),
               dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay), dt(lr), dt(_sign(maximize)),
               np.zeros(len(plan.blocks)), np.zeros(len(params)), np.zeros(len(params), dtype=dtype.dtype))


def schedule_free_sgd(params: Tensors, grads: Tensors, z: Tensors, *, lr: float, momentum: float, c: float,
                      weight_decay: float, maximize: bool) -> None:
    """:func:`descent.functional.schedule_free_sgd` over a bucket (:func:`schedule_free_multi`)."""
    run_elementwise(schedule_free_multi, [params, grads, z, None], list(range(len(params))),
                    (c, lr * (momentum * (1 - c) - 1), lr, weight_decay, 0.0, 0.0, 1.0, 0.0, _sign(maximize)),
                    (False,))


def schedule_free_adamw(params: Tensors, grads: Tensors, z: Tensors, exp_avg_sq: Tensors, *, step: int, lr: float,
                        beta1: float, beta2: float, eps: float, c: float, weight_decay: float,
                        maximize: bool) -> None:
    """:func:`descent.functional.schedule_free_adamw` over a bucket (:func:`schedule_free_multi`)."""
    run_elementwise(schedule_free_multi, [params, grads, z, exp_avg_sq], list(range(len(params))),
                    (c, lr * (beta1 * (1 - c) - 1), lr, weight_decay, beta2, 1 - beta2, 1 - beta2**step, eps,
                     _sign(maximize)), (True,))
