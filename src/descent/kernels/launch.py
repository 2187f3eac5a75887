"""Launchers: the one place that turns an optimizer's named tensors and hyperparameters
into a kernel call.

Every launcher has the signature its optimizer's declaration checks
(:class:`descent.optim._spec.Kernel`): ``params``, ``grads``, one list per state column
named by its state key, ``steps`` where the kernel needs them, and exactly the keyword
hyperparameters of the optimizer's :mod:`descent.functional` function. The base hands a
launcher only dense, contiguous, non-empty local tensors of one device and dtype.

Two families live here: descent's Numba CPU kernels (one call per bucket through the
tensors' addresses, :mod:`descent.kernels.multi`) and torch's own multi-tensor kernels
(``torch.optim``'s fused and foreach paths for SGD, Adagrad, Adam/AdamW and RMSprop),
which advance the step tensors themselves.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache
from itertools import repeat

import numpy as np
import torch
import torch.optim.adagrad as _torch_adagrad
import torch.optim.adam as _torch_adam
import torch.optim.rmsprop as _torch_rmsprop
import torch.optim.sgd as _torch_sgd
from torch import Tensor

from . import addresses, bucket_plan, like, run_elementwise, take

__all__ = ["lion", "sophia", "rmsprop", "lamb", "adafactor", "muon", "adam_fused", "adam_foreach", "adagrad_fused",
           "adagrad_foreach", "rmsprop_foreach", "sgd_fused", "sgd_foreach"]

Tensors = list[Tensor]
Maybe = list[Tensor | None]
_SHAPE = operator.attrgetter("shape")


def _sign(maximize: bool) -> float:
    return -1.0 if maximize else 1.0


# ------------------------------------------------------------------ Numba (CPU)
def lion(params: Tensors, grads: Tensors, exp_avg: Tensors, *, lr: float, beta1: float, beta2: float,
         weight_decay: float, maximize: bool) -> None:
    """:func:`descent.functional.lion` over a bucket (:func:`descent.kernels.elementwise.lion_multi`)."""
    from .elementwise import lion_multi

    run_elementwise(lion_multi, [params, grads, exp_avg], list(range(len(params))),
                    (1 - lr * weight_decay, lr, beta1, 1 - beta1, beta2, 1 - beta2, _sign(maximize)))


def sophia(params: Tensors, grads: Tensors, exp_avg: Tensors, hessian: Tensors, *, lr: float, beta1: float,
           rho: float, bs: float, weight_decay: float, eps: float, maximize: bool) -> None:
    """:func:`descent.functional.sophia` over a bucket (:func:`descent.kernels.elementwise.sophia_multi`)."""
    from .elementwise import sophia_multi

    run_elementwise(sophia_multi, [params, grads, exp_avg, hessian], list(range(len(params))),
                    (1 - lr * weight_decay, lr, beta1, 1 - beta1, rho * bs, eps, _sign(maximize)))


def rmsprop(params: Tensors, grads: Tensors, square_avg: Tensors, grad_avg: Maybe, momentum_buffer: Maybe, *,
            lr: float, alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool,
            maximize: bool) -> None:
    """:func:`descent.functional.rmsprop` over a bucket (:func:`descent.kernels.elementwise.rmsprop_multi`)."""
    from .elementwise import rmsprop_multi

    use_m = momentum > 0
    run_elementwise(rmsprop_multi, [params, grads, square_avg, grad_avg if centered else None,
                                    momentum_buffer if use_m else None], list(range(len(params))),
                    (lr, alpha, 1 - alpha, eps, weight_decay, momentum, _sign(maximize)), (bool(centered), use_m))


def lamb(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, *, steps: list[int], lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float, clamp_value: float | None,
         bias_correction: bool, maximize: bool) -> None:
    """:func:`descent.functional.lamb` over a bucket: moments and norms, trust ratios, apply
    (:func:`descent.kernels.elementwise.lamb_multi`)."""
    import numba

    from . import multi
    from .elementwise import lamb_multi

    plan, dtype = bucket_plan(params), like(params[0])
    dt = dtype.dtype.type
    t = np.asarray(steps, dtype=np.float64)
    bc1 = (1 - beta1**t if bias_correction else np.ones_like(t)).astype(dtype.dtype)
    bc2 = (1 - beta2**t if bias_correction else np.ones_like(t)).astype(dtype.dtype)
    first, large, bounds = multi.chunks(tuple(plan.sizes.tolist()), numba.get_num_threads())
    # one direction buffer per thread, as large as its largest (not large) tensor up to 4 waves
    # (a bigger one recomputes the direction)
    small = plan.sizes.copy()
    small[large] = 0
    widest = max((int(small[a:b].max()) for a, b in zip(bounds[:-1], bounds[1:]) if b > a), default=0)
    scratch = np.empty((len(bounds) - 1, min(widest, 4 * multi.WAVE)), dtype=dtype.dtype)
    sums = np.empty((int(np.diff(first)[large].max()) if large.size else 1, 2))
    lamb_multi(addresses(params, grads, exp_avg, exp_avg_sq), plan.sizes, plan.blocks, first, large, bounds, dtype,
               scratch, bc1, bc2, dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay),
               dt(_sign(maximize)), float(lr), -1.0 if clamp_value is None else float(clamp_value),
               np.ones(len(params)), sums)


def adafactor(params: Tensors, grads: Tensors, row_var: Maybe, col_var: Maybe, variance: Maybe, exp_avg: Maybe, *,
              steps: list[int], lr: float | None, relative_step: bool, warmup_init: bool, decay_rate: float,
              eps1: float, eps2: float, clip_threshold: float, beta1: float | None, weight_decay: float,
              scale_parameter: bool, maximize: bool) -> None:
    """:func:`descent.functional.adafactor` over a bucket (:func:`descent.kernels.adafactor.adafactor_multi`).

    A tensor whose state has neither a full ``variance`` nor both factors is refused by
    the functional with its own error, so such a bucket runs there instead.
    """
    import numba

    from . import multi, threads_for
    from ..functional import adafactor as _fa
    from ..functional import adafactor_lr
    from .adafactor import adafactor_multi

    # as the functional decides: both factors, else the full variance (C-level passes, no Python per tensor)
    factored = tuple(map(operator.and_, map(operator.is_not, row_var, repeat(None)),
                         map(operator.is_not, col_var, repeat(None))))
    if not all(map(operator.or_, factored, map(operator.is_not, variance, repeat(None)))):
        for i, p in enumerate(params):
            _fa(p, grads[i], row_var[i], col_var[i], variance[i], exp_avg[i], step=steps[i],
                lr=adafactor_lr(steps[i], lr, relative_step=relative_step, warmup_init=warmup_init),
                decay_rate=decay_rate, eps1=eps1, eps2=eps2, clip_threshold=clip_threshold, beta1=beta1,
                weight_decay=weight_decay, scale_parameter=scale_parameter, maximize=maximize)
        return
    shapes = tuple(map(_SHAPE, params))  # torch.Size hashes and compares as the tuple of its sizes
    threads_for(_adafactor_meta(shapes, factored)[5])  # the thread count, as bucket_plan sets it
    (meta, sizes, blocks, first, large, bounds, colpart, part, row_total, col_total,
     most) = _adafactor_layout(shapes, factored, numba.get_num_threads(), multi.BLOCK, multi.WAVE)
    dtype = like(params[0])
    rates = {t: adafactor_lr(t, lr, relative_step=relative_step, warmup_init=warmup_init) for t in set(steps)}
    b2s = 1.0 - np.asarray(steps, dtype=np.float64) ** decay_rate
    lrs = (np.full(len(steps), rates[steps[0]]) if len(rates) == 1  # one step count: the usual case
           else np.asarray([rates[t] for t in steps], dtype=np.float64))
    b1 = 0.0 if beta1 is None else float(beta1)
    adafactor_multi(addresses(params, grads, row_var, col_var, variance, exp_avg if beta1 is not None else None),
                    sizes, meta, blocks, first, large, bounds, dtype, b2s, lrs, eps1, eps2, clip_threshold,
                    weight_decay, b1, 1.0 - b1, beta1 is not None, scale_parameter, _sign(maximize),
                    np.empty(colpart), np.empty(part), np.empty(row_total, dtype=dtype.dtype),
                    np.empty(col_total, dtype=dtype.dtype), np.empty((2, most)))


@lru_cache(maxsize=64)
def _adafactor_meta(shapes: tuple[tuple[int, ...], ...],
                    factored: tuple[bool, ...]) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...], int, int, int]:
    """:func:`adafactor`'s ``meta`` table (shared by the calls; the kernel only reads it), the plan's
    row lengths and spans, the lengths of the row and column factor scratch for a bucket of these
    shapes and its number of elements (cached: the launcher runs every step, and this loop over 200
    tensors with the scratch sizes below once took 0.5 ms of Adafactor's step on the 20.1M GPT list)."""
    meta = np.zeros((len(shapes), 4), dtype=np.int64)
    sizes = [math.prod(s) for s in shapes]
    row_off = col_off = 0
    for t, (shape, fac, size) in enumerate(zip(shapes, factored, sizes)):
        if fac:
            n, m = shape[-2], shape[-1]
            meta[t] = (n, m, row_off, col_off)
            row_off += size // m
            col_off += size // n
        else:
            meta[t, 1] = size
    spans = tuple(n * m if n else size for (n, m, _, _), size in zip(meta.tolist(), sizes))
    rows = tuple(m if n else 1 for n, m, _, _ in meta.tolist())
    return meta, rows, spans, max(row_off, 1), max(col_off, 1), sum(sizes)


@lru_cache(maxsize=64)
def _adafactor_layout(shapes: tuple[tuple[int, ...], ...], factored: tuple[bool, ...], threads: int, block: int,
                      wave: int) -> tuple:
    """Everything :func:`adafactor` hands the kernel that the shapes fix: ``(meta, sizes, blocks, first,
    large, bounds, colpart, part, row factors, column factors, most blocks)``, the plan's sizes and
    blocks (:func:`descent.kernels.multi.plan`), :func:`descent.kernels.multi.chunks` for the bucket and
    the shapes of its scratch arrays; ``block`` and ``wave`` (:data:`~descent.kernels.multi.BLOCK`,
    :data:`~descent.kernels.multi.WAVE`) key the cache (one look-up per step instead of a pass over
    the tensors for the plan's key)."""
    from . import multi

    meta, rows, spans, row_total, col_total, _ = _adafactor_meta(shapes, factored)
    sizes = tuple(math.prod(s) for s in shapes)
    plan = multi.plan(sizes, rows, spans, block, wave)
    first, large, bounds = multi._chunks(sizes, threads, rows, spans, block, wave)
    fac = meta[:, 0] > 0
    counts, is_large = np.diff(first), np.isin(np.arange(len(shapes)), large)
    per_tensor = int(counts[fac & ~is_large].max()) if (fac & ~is_large).any() else 1
    most = int(counts[is_large].max()) if large.size else 1
    wide_large = int(meta[fac & is_large, 1].max()) if (fac & is_large).any() else 1
    width = int(meta[fac, 1].max()) if fac.any() else 1
    part = (most, wide_large) if (fac & is_large).any() else (1, 1)
    return (meta, plan.sizes, plan.blocks, first, large, bounds, (len(bounds) - 1, per_tensor, width), part,
            row_total, col_total, most)


# ------------------------------------------------------------------ torch's kernels
def _adam(fused: bool, params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors,
          max_exp_avg_sq: Maybe, steps: Tensors, capturable: bool = False, **hp) -> None:
    # torch's fused kernels read the steps and a tensor lr on the device (graph-safe as they are); its
    # foreach path needs capturable=True for that, which it refuses on CPU (where nothing is captured)
    on_device = capturable and params[0].device.type != "cpu"
    if fused or not (torch.compiler.is_compiling() or on_device):
        _torch_adam.adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq if hp["amsgrad"] else [], steps,
                         foreach=not fused, fused=fused, **hp)
        return
    # capturable, or inside torch.compile: torch's capturable formulas (bias corrections as tensor ops,
    # traced on any device); they take beta ** step in the step's dtype, so the steps go in as float64 (1 - 0.999 ** 1
    # in float32 is off by 6e-5) and come back as float32 (torch's layout)
    wide = torch.float32 if params[0].device.type == "mps" else torch.float64
    steps64 = [s.to(wide) for s in steps]
    _torch_adam.adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq if hp["amsgrad"] else [], steps64,
                     foreach=True, capturable=True, **hp)
    torch._foreach_copy_(steps, steps64)


def _direct(params: Tensors, steps: Tensors, grad_scale: Tensor | None, *scalars: object) -> bool:
    """Whether torch's fused CPU op may be called directly, its step counters advanced here (then they are).

    torch's Python wrapper around the op (``torch.optim.adam._fused_adam``, ``_fused_adagrad``)
    groups the tensors by device and dtype (a bucket is one already) and adds 1 to the counters
    with ``torch._foreach_add_``: 0.30 ms for the 196 CPU scalars of the GPT list of
    ``benchmarks/step_overhead.py`` (one thread, loaded). On CPU, without ``GradScaler`` and with host
    scalars, :func:`descent.kernels.multi.advance_counters` adds the same float32 1 in one compiled
    loop and the op is called as the wrapper calls it.
    """
    if (params[0].device.type != "cpu" or grad_scale is not None or not _numba_ok()
            or torch.compiler.is_compiling() or any(isinstance(x, Tensor) for x in scalars)):
        return False
    from .multi import advance_counters

    return advance_counters(steps) is not None


def _numba_ok() -> bool:
    from . import AVAILABLE

    return AVAILABLE


def _scale_args(grad_scale: Tensor | None, found_inf: Tensor | None, device: torch.device) -> dict[str, Tensor | None]:
    """GradScaler's scale and inf flag on the parameters' device, as torch's fused kernels take them."""
    if grad_scale is None:
        return {}
    return {"grad_scale": grad_scale.to(device), "found_inf": found_inf.to(device)}


def adam_fused(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, max_exp_avg_sq: Maybe, *,
               steps: Tensors, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
               amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, grad_scale: Tensor | None = None,
               found_inf: Tensor | None = None, capturable: bool = False) -> None:
    """torch's fused Adam/AdamW kernel (``torch.optim.adam.adam(fused=True)``); unscales the gradients
    itself when ``GradScaler`` passes its scale. It reads the steps (and a tensor ``lr``) on the
    device, so it is capturable as it is."""
    if _direct(params, steps, grad_scale, lr, beta1, beta2, eps, weight_decay):
        op = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
        op(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else [], steps, amsgrad=amsgrad, lr=lr,
           beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=maximize)
        return
    _adam(True, params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, steps, capturable, lr=lr, beta1=beta1,
          beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          decoupled_weight_decay=decoupled_weight_decay, **_scale_args(grad_scale, found_inf, params[0].device))


def adam_foreach(params: Tensors, grads: Tensors, exp_avg: Tensors, exp_avg_sq: Tensors, max_exp_avg_sq: Maybe, *,
                 steps: Tensors, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, capturable: bool = False) -> None:
    """torch's multi-tensor (foreach) Adam/AdamW (its capturable formulas with ``capturable`` on a GPU)."""
    _adam(False, params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, steps, capturable, lr=lr, beta1=beta1,
          beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
          decoupled_weight_decay=decoupled_weight_decay)


def adagrad_fused(params: Tensors, grads: Tensors, sum: Tensors, *, steps: Tensors, lr: float,  # noqa: A002
                  lr_decay: float, weight_decay: float, eps: float, maximize: bool, grad_scale: Tensor | None = None,
                  found_inf: Tensor | None = None) -> None:
    """torch's fused Adagrad kernel (unscales the gradients itself under ``GradScaler``)."""
    if _direct(params, steps, grad_scale, lr, lr_decay, weight_decay, eps):
        torch._fused_adagrad_(params, grads, sum, steps, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                              maximize=maximize)
        return
    _torch_adagrad.adagrad(params, grads, sum, steps, fused=True, lr=lr, lr_decay=lr_decay,
                           weight_decay=weight_decay, eps=eps, maximize=maximize,
                           **_scale_args(grad_scale, found_inf, params[0].device))


def adagrad_foreach(params: Tensors, grads: Tensors, sum: Tensors, *, steps: Tensors, lr: float,  # noqa: A002
                    lr_decay: float, weight_decay: float, eps: float, maximize: bool) -> None:
    """torch's multi-tensor (foreach) Adagrad."""
    _torch_adagrad.adagrad(params, grads, sum, steps, foreach=True, lr=lr, lr_decay=lr_decay,
                           weight_decay=weight_decay, eps=eps, maximize=maximize)


def rmsprop_foreach(params: Tensors, grads: Tensors, square_avg: Tensors, grad_avg: Maybe, momentum_buffer: Maybe, *,
                    steps: Tensors, lr: float, alpha: float, eps: float, weight_decay: float, momentum: float,
                    centered: bool, maximize: bool) -> None:
    """torch's multi-tensor (foreach) RMSprop."""
    _torch_rmsprop.rmsprop(params, grads, square_avg, grad_avg if centered else [],
                           momentum_buffer if momentum > 0 else [], steps, foreach=True, lr=lr, alpha=alpha,
                           eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                           maximize=maximize, capturable=torch.compiler.is_compiling())


def sgd_foreach(params: Tensors, grads: Tensors, momentum_buffer: Maybe, *, lr: float, momentum: float,
                dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> None:
    """torch's multi-tensor (foreach) SGD; fills ``momentum_buffer`` in place of its ``None`` entries."""
    _torch_sgd.sgd(params, grads, momentum_buffer, foreach=True, lr=lr, momentum=momentum, dampening=dampening,
                   weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)


def sgd_fused(params: Tensors, grads: Tensors, momentum_buffer: Maybe, *, lr: float, momentum: float,
              dampening: float, weight_decay: float, nesterov: bool, maximize: bool, grad_scale: Tensor | None = None,
              found_inf: Tensor | None = None, capturable: bool = False) -> None:  # noqa: ARG001
    """torch's fused SGD kernel; fills ``momentum_buffer`` in place of its ``None`` entries. It reads a
    tensor ``lr`` on the device, so it is capturable as it is.

    torch's ``fused=True`` gives garbage buffers to a parameter whose first gradient comes
    after the others' (it treats the whole bucket as first or not): here the parameters
    without a buffer run as a separate first step.
    """
    hp = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
              maximize=maximize, **_scale_args(grad_scale, found_inf, params[0].device))
    if momentum == 0:
        torch._fused_sgd_(params, grads, [], is_first_step=False, **hp)
        return
    first = [i for i, b in enumerate(momentum_buffer) if b is None]
    later = [i for i, b in enumerate(momentum_buffer) if b is not None]
    for i in first:
        momentum_buffer[i] = torch.empty_like(grads[i])
    for idx, is_first in ((first, True), (later, False)):
        if idx:
            torch._fused_sgd_(take(params, idx), take(grads, idx), take(momentum_buffer, idx),
                              is_first_step=is_first, **hp)


def muon(params: Tensors, grads: Tensors, momentum_buffer: Tensors, **hp) -> None:
    """:func:`descent.functional.muon_batched`: same-shape matrices orthogonalized as one batch
    (takes Muon's hyperparameters: lr, weight_decay, momentum, nesterov, ns_*, eps, adjust_lr_fn, maximize)."""
    from ..functional import muon_batched

    muon_batched(params, grads, momentum_buffer, **hp)
