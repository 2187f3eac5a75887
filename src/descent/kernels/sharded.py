"""Numba kernels for LAMB on sharded tensors: the one-process kernel's two passes, split around an all-reduce.

:func:`descent.kernels.elementwise.lamb_multi` needs every tensor's norms between its
moment pass and its apply pass; under FSDP2 a rank holds a shard of each tensor, so the
norms are sums over the ranks. :func:`lamb_sharded` runs the first pass (moments, and
this rank's sums of :math:`\\theta^2` and :math:`u^2` per tensor), hands the sums to the
caller's ``reduce`` (one ``all_reduce`` for the bucket), and runs the second pass (the
trust ratios and the apply). The per-element arithmetic is ``elementwise.py``'s own
(``_lamb_norms_direct``, ``_lamb_apply_direct``), so a rank's rows change exactly as one
process's kernel changes them, given the same ratio; the ratio differs from one
process's by the order of the additions only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numba import njit, prange

from . import addresses, like, threads_for
from .elementwise import _lamb_apply_direct, _lamb_norms_direct
from .multi import view

__all__ = ["lamb_sharded", "lamb_partial_sums", "lamb_apply"]

_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")


@njit(parallel=True, **_OPTS)
def lamb_partial_sums(ptrs, sizes, like, bc1, bc2, b1, c1, b2, c2, eps, wd, sign, out):  # pragma: no cover
    """Moments of every tensor; ``out[t] = (sum p^2, sum u^2)`` over this rank's elements of tensor ``t``."""
    one = like.dtype.type(1.0)
    for t in prange(sizes.size):
        n = sizes[t]
        if n == 0:
            continue
        sp, su = _lamb_norms_direct(view(ptrs[0, t], n, like), view(ptrs[1, t], n, like), view(ptrs[2, t], n, like),
                                    view(ptrs[3, t], n, like), b1, c1, b2, c2, one / bc1[t], one / bc2[t], eps, wd,
                                    sign)
        out[t, 0] = sp
        out[t, 1] = su


@njit(parallel=True, **_OPTS)
def lamb_apply(ptrs, sizes, like, bc1, bc2, eps, wd, coefs):  # pragma: no cover - compiled
    """``p -= coefs[t] * u`` for every tensor, ``u`` recomputed from the moments."""
    one = like.dtype.type(1.0)
    for t in prange(sizes.size):
        n = sizes[t]
        if n == 0:
            continue
        _lamb_apply_direct(view(ptrs[0, t], n, like), view(ptrs[2, t], n, like), view(ptrs[3, t], n, like),
                           one / bc1[t], one / bc2[t], eps, wd, coefs[t])


def supports(*lists: list[torch.Tensor]) -> bool:
    """Dense contiguous float32/float64 CPU tensors (plain, not DTensors): what these kernels take."""
    first = lists[0][0]
    return (first.device.type == "cpu" and first.dtype in (torch.float32, torch.float64)
            and all(type(t) is torch.Tensor and t.is_contiguous() and t.dtype == first.dtype
                    for ts in lists for t in ts))


def lamb_sharded(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                 exp_avg_sq: list[torch.Tensor], *, steps: list[int], lr: float, beta1: float, beta2: float,
                 eps: float, weight_decay: float, clamp_value: float | None, bias_correction: bool, maximize: bool,
                 reduce: Callable[[np.ndarray], np.ndarray]) -> None:
    """LAMB over local shards; ``reduce`` sums a ``(T, 2)`` float64 array over the ranks (the caller's collective).

    Example:
        >>> p, g = [torch.ones(3)], [torch.ones(3)]
        >>> lamb_sharded(p, g, [torch.zeros(3)], [torch.zeros(3)], steps=[1], lr=0.1, beta1=0.9, beta2=0.999,
        ...              eps=1e-6, weight_decay=0.0, clamp_value=None, bias_correction=True, maximize=False,
        ...              reduce=lambda a: a)   # one process: nothing to add
        >>> [round(x, 4) for x in p[0].tolist()]
        [0.9, 0.9, 0.9]
    """
    dtype = like(params[0])
    dt = dtype.dtype.type
    t = np.asarray(steps, dtype=np.float64)
    bc1 = (1 - beta1 ** t if bias_correction else np.ones_like(t)).astype(dtype.dtype)
    bc2 = (1 - beta2 ** t if bias_correction else np.ones_like(t)).astype(dtype.dtype)
    sizes = np.asarray([p.numel() for p in params], dtype=np.int64)
    ptrs = addresses(params, grads, exp_avg, exp_avg_sq)
    threads_for(int(sizes.sum()))
    sums = np.zeros((len(params), 2))
    lamb_partial_sums(ptrs, sizes, dtype, bc1, bc2, dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps),
                      dt(weight_decay), dt(-1.0 if maximize else 1.0), sums)
    total = reduce(sums)
    # the norms rounded to the tensors' dtype, as lamb_multi does
    wn = np.sqrt(total[:, 0]).astype(dtype.dtype).astype(np.float64)
    un = np.sqrt(total[:, 1]).astype(dtype.dtype).astype(np.float64)
    if clamp_value is not None:
        wn = np.minimum(wn, float(clamp_value))
    ok = (wn > 0) & (un > 0)
    ratio = np.where(ok, (wn / np.where(ok, un, 1.0)).astype(dtype.dtype).astype(np.float64), 1.0)
    lamb_apply(ptrs, sizes, dtype, bc1, bc2, dt(eps), dt(weight_decay), (ratio * float(lr)).astype(dtype.dtype))
