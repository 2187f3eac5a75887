"""Numba kernels on sharded tensors: the one-process kernels' passes, split around the all-reduces.

LAMB below; Adafactor (:func:`adafactor_stages`) and MARS (:func:`mars_stages`) the same way,
with the per-element functions of :mod:`descent.kernels.adafactor` and :mod:`descent.kernels.modern`.

:func:`descent.kernels.elementwise.lamb_multi` needs every tensor's norms between its
moment pass and its apply pass; under FSDP2 a rank holds a shard of each tensor, so the
norms are sums over the ranks. :func:`lamb_stages` runs the first pass (moments, and
this rank's sums of :math:`\\theta^2` and :math:`u^2` per tensor), yields the sums to the
caller (one ``all_reduce`` for the bucket or wave), and runs the second pass (the trust
ratios and the apply). The per-element arithmetic is ``elementwise.py``'s own
(``_lamb_norms_direct``, ``_lamb_apply_direct``), so a rank's rows change exactly as one
process's kernel changes them, given the same ratio; the ratio differs from one
process's by the order of the additions only.

Each ``*_stages`` function is a generator that yields this rank's partial sums (a list of
float64 tensors) and receives the sums over the ranks, so that the caller can run several
waves of a bucket with their reductions in flight (:func:`descent.distributed._comm.run_stages`).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
from numba import njit, prange

from . import addresses, like, threads_for
from .elementwise import _lamb_apply_direct, _lamb_norms_direct
from .multi import view

__all__ = ["lamb_stages", "lamb_partial_sums", "lamb_apply", "adafactor_fits", "adafactor_stages", "mars_stages",
           "supports"]

#: What a stage generator yields (this rank's partial sums) and receives (their sums over the ranks).
Stages = Generator[list[torch.Tensor], list[torch.Tensor], None]


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


def lamb_stages(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                exp_avg_sq: list[torch.Tensor], *, steps: list[int], lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, clamp_value: float | None, bias_correction: bool, maximize: bool,
                counted: list[bool] | None = None) -> Stages:
    """LAMB over local shards, as a generator: yields ``[sums]`` (``(T, 2)``: this rank's sums of
    :math:`\\theta^2` and :math:`u^2`, zero where ``counted`` is False), receives the totals, applies.

    Example:
        >>> from contextlib import suppress
        >>> p, g = [torch.ones(3)], [torch.ones(3)]
        >>> stages = lamb_stages(p, g, [torch.zeros(3)], [torch.zeros(3)], steps=[1], lr=0.1, beta1=0.9,
        ...                      beta2=0.999, eps=1e-6, weight_decay=0.0, clamp_value=None, bias_correction=True,
        ...                      maximize=False)
        >>> with suppress(StopIteration):
        ...     stages.send(next(stages))  # one process: the sums over the ranks are this rank's
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
    if counted is not None:
        sums *= np.asarray(counted, dtype=np.float64)[:, None]
    total = (yield [torch.from_numpy(sums)])[0].numpy()
    # the norms rounded to the tensors' dtype, as lamb_multi does
    wn = np.sqrt(total[:, 0]).astype(dtype.dtype).astype(np.float64)
    un = np.sqrt(total[:, 1]).astype(dtype.dtype).astype(np.float64)
    if clamp_value is not None:
        wn = np.minimum(wn, float(clamp_value))
    ok = (wn > 0) & (un > 0)
    ratio = np.where(ok, (wn / np.where(ok, un, 1.0)).astype(dtype.dtype).astype(np.float64), 1.0)
    lamb_apply(ptrs, sizes, dtype, bc1, bc2, dt(eps), dt(weight_decay), (ratio * float(lr)).astype(dtype.dtype))


def adafactor_fits(params: list[torch.Tensor], factored: list[bool], rows_sharded: list[bool],
                   states: list[torch.Tensor | None]) -> bool:
    """Whether :func:`adafactor_stages` takes these local tensors: factored ones (``[..., n, m]``) whose
    local part is whole matrices or a run of rows of each (``rows_sharded``), 1-D unfactored ones, dense
    float32/float64 on the CPU."""
    return supports(params) and all(t is None or (t.is_contiguous() and t.dtype == params[0].dtype) for t in states) \
        and all(
        (p.ndim >= 2 and f and rs) or (p.ndim == 1 and not f) for p, f, rs in zip(params, factored, rows_sharded))


def _matrices(t: np.ndarray) -> np.ndarray:
    """A local factored tensor ``[..., rows, m]`` as a stack of 2-D blocks ``(k, rows, m)`` (a view)."""
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def adafactor_stages(params, grads, row_var, col_var, variance, exp_avg, *, first_row: list[int],
                     first_matrix: list[int] | None = None,
                     counted: list[bool], numels: list[int], steps: list[int], lr: float | None, relative_step: bool,
                     warmup_init: bool, decay_rate: float, eps1: float, eps2: float, clip_threshold: float,
                     beta1: float | None, weight_decay: float, scale_parameter: bool, maximize: bool) -> Stages:
    """Adafactor over local row blocks with :mod:`descent.kernels.adafactor`'s per-element passes, as a
    generator (two yields, sums over the ranks between them: row/column means and
    :math:`\\sum\\theta^2`, then :math:`\\sum U^2`).

    ``params``... are this rank's rows (``first_row`` their offset in each whole matrix,
    ``first_matrix`` the index of its first matrix in the flattened batch of a tensor of more than two
    dimensions split along dim 0, ``numels`` the whole tensors' sizes);
    ``row_var``/``col_var`` are the whole statistics (the same on every rank), ``variance``
    and ``exp_avg`` local like the parameter; ``counted`` says whether this rank's sums count
    (False for a replicated tensor on ranks other than the first).
    """
    from ..functional import adafactor_lr
    from .adafactor import _factored_stats, _factored_usum, _factors, _step_size, _vector_sums, _vector_variance

    dt = like(params[0]).dtype.type
    b2s = 1.0 - np.asarray(steps, dtype=np.float64) ** decay_rate
    n_t = len(params)
    first_matrix = first_matrix or [0] * n_t
    sq_p, sq_u, parts = np.zeros(n_t), np.zeros(n_t), []
    for i, (p, g) in enumerate(zip(params, grads)):
        lp, lg = p.detach().numpy(), g.detach().numpy()
        if row_var[i] is not None:  # pass A: this rank's row means and column sums (state untouched)
            m = lp.shape[-1]
            n = row_var[i].numel() // max(col_var[i].numel() // m, 1)  # rows of one matrix
            means, cols = np.zeros(row_var[i].numel(), dtype=lp.dtype), np.zeros(col_var[i].numel())
            for j, (bp, bg) in enumerate(zip(_matrices(lp), _matrices(lg)) if lp.size else ()):
                b, r0 = first_matrix[i] + j, first_row[i]  # receives the row means (b2 = 0, c2 = 1)
                sq_p[i] += _factored_stats(bp.reshape(-1), bg, means[b * n + r0:b * n + r0 + bg.shape[0]],
                                           cols[b * m:(b + 1) * m], dt(eps1), dt(0.0), dt(1.0))
            parts += [torch.from_numpy(means.astype(np.float64) * counted[i]), torch.from_numpy(cols * counted[i])]
        else:
            lv = variance[i].detach().numpy()
            _vector_variance(lg, lv, dt(eps1), dt(b2s[i]), dt(1.0 - b2s[i]))
            sq_u[i], sq_p[i] = _vector_sums(lp, lg, lv) if lp.size else (0.0, 0.0)
    mask = np.asarray(counted, dtype=np.float64)
    summed = yield parts + [torch.from_numpy(sq_p * mask)]
    sq_p = summed[-1].detach().numpy()
    factors = {}
    for k, i in enumerate(i for i in range(n_t) if row_var[i] is not None):
        row, col = row_var[i].detach().numpy().reshape(-1), col_var[i].detach().numpy().reshape(-1)
        lg = grads[i].detach().numpy()
        m = lg.shape[-1]
        n = row.size // max(col.size // m, 1)
        row[:] = row * dt(b2s[i]) + summed[2 * k].detach().numpy().astype(row.dtype) * dt(1.0 - b2s[i])
        rf, cf = np.empty(row.size, dtype=row.dtype), np.empty(col.size, dtype=row.dtype)
        _factors(row, col, summed[2 * k + 1].detach().numpy(), rf, cf, n, m, dt(b2s[i]), dt(1.0 - b2s[i]))
        blocks = _matrices(lg) if lg.size else lg.reshape(0, 0, m)
        r0, b0 = first_row[i], first_matrix[i]
        factors[i] = [(rf[(b0 + j) * n + r0:(b0 + j) * n + r0 + blocks.shape[1]], cf[(b0 + j) * m:(b0 + j + 1) * m])
                      for j in range(blocks.shape[0])]
        sq_u[i] = sum(_factored_usum(bg, *fs) for bg, fs in zip(blocks, factors[i]))
    sq_u = (yield [torch.from_numpy(sq_u * mask)])[0].detach().numpy()
    rates = [adafactor_lr(t, lr, relative_step=relative_step, warmup_init=warmup_init) for t in steps]
    steps_sizes = [_step_size(max(numels[i], 1), sq_u[i], sq_p[i], rates[i], eps2, clip_threshold, weight_decay,
                              scale_parameter) for i in range(n_t)]
    _adafactor_apply(params, grads, variance, exp_avg, factors, steps_sizes, beta1, dt(-1.0 if maximize else 1.0))


def _adafactor_apply(params, grads, variance, exp_avg, factors, steps_sizes, beta1, sign) -> None:
    """The last pass of :func:`adafactor_stages`: each tensor's update with its (scale, decay)."""
    from .adafactor import _factored_apply, _vector_apply

    dt = like(params[0]).dtype.type
    use_m = beta1 is not None
    b1 = dt(beta1 if use_m else 0.0)
    for i, (p, g) in enumerate(zip(params, grads)):
        scale, decay = steps_sizes[i]
        lp, lg = p.detach().numpy(), g.detach().numpy()
        mom = exp_avg[i].detach().numpy() if use_m else lp
        if not lp.size:
            continue
        if i in factors:
            for bp, bg, bm, fs in zip(_matrices(lp), _matrices(lg), _matrices(mom), factors[i]):
                _factored_apply(bp, bg, *fs, dt(scale), dt(decay), bm, b1, dt(1.0) - b1, use_m, sign)
        else:
            lv = variance[i].detach().numpy()
            _vector_apply(lp, lg, lv, dt(scale), dt(decay), mom, b1, dt(1.0) - b1, use_m, sign)


def mars_stages(params, grads, exp_avg, exp_avg_sq, last_grad, *, counted: list[bool], steps: list[int], lr: float,
                beta1: float, beta2: float, eps: float, gamma: float, weight_decay: float, maximize: bool) -> Stages:
    """MARS over local shards with :mod:`descent.kernels.modern`'s per-element passes, as a generator: the
    corrected gradients and this rank's sums of :math:`c^2` (one yield: the sums over the ranks come
    back), then the step."""
    import math

    from .modern import _mars_apply, _mars_correct, _sumsq

    dt = like(params[0]).dtype.type
    sign = dt(-1.0 if maximize else 1.0)
    sums = np.zeros(len(params))
    for i, (g, last) in enumerate(zip(grads, last_grad)):
        if g.numel():
            lst = last.detach().numpy().reshape(-1)
            _mars_correct(g.detach().numpy().reshape(-1), lst, dt(gamma * beta1 / (1 - beta1)), sign)
            sums[i] = _sumsq(lst) if counted[i] else 0.0
    total = (yield [torch.from_numpy(sums)])[0].numpy()
    for i, p in enumerate(params):
        if not p.numel():
            continue
        norm = dt(math.sqrt(total[i]))
        flat = [t.detach().numpy().reshape(-1) for t in (p, grads[i], exp_avg[i], exp_avg_sq[i], last_grad[i])]
        _mars_apply(*flat, norm, norm > dt(1.0), dt(1 - beta1), dt(beta2), dt(1 - beta2),
                    dt(math.sqrt(1 - beta2 ** steps[i])), dt(1 - beta1 ** steps[i]), dt(eps), dt(weight_decay), dt(lr),
                    sign)
