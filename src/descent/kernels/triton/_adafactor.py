"""Triton multi-tensor Adafactor: factored row/column statistics, update clipping, apply.

The bucket is cut into blocks: for a factored tensor (``row_var`` and ``col_var`` given,
viewed as matrices ``(n, m)``), a block is :data:`ROWS` whole rows of one matrix; for a
vector (``variance`` given), :data:`VBLOCK` elements. Five launches per bucket:

A. per block: row sums of :math:`g^2+\\epsilon_1` (the ``row_var`` update), the block's
   column partial sums into a scratch row, :math:`\\sum\\theta^2`; vectors: the
   ``variance`` update and :math:`\\sum U^2`;
F. per (matrix, column chunk): the column sums over the matrix's blocks (block order,
   so deterministic) and the ``col_var`` update; per matrix: the mean of ``row_var``;
B. per factored block: :math:`\\sum U^2` with :math:`U = g/\\sqrt{R/\\bar R}/\\sqrt{C}`;
S. per tensor: the float64 totals, the clipping denominator, the step size
   :math:`\\alpha` and the decay, rounded to float32 as the functional's Python floats are;
C. per block: the update (and momentum), in the functional's operation order.

Means and norms are sums in another order than torch's, so against
:func:`descent.functional.adafactor` in float32 the parameters agree to a few ulp of the
update, not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (LAUNCH, TL, address_rows, cached_ints, exact, pointers_key, positions, round_to,
                      scalars, sign_of, to_device, wide)

__all__ = ["ROWS", "COLS", "VBLOCK", "adafactor"]

#: Rows per factored block, and columns per tile of a factored block.
ROWS, COLS = 8, 256
#: Elements per vector block.
VBLOCK = 2048
_RBLOCK = 256


@triton.jit
def _ptr(addr, role, t, T, DT: tl.constexpr):
    return tl.load(addr + role * T + t).to(tl.pointer_type(DT))


@triton.jit
def _af_stats(addr, meta, table, hp, colpart, usum, psum, T, sc, DT: tl.constexpr, ROWS: tl.constexpr,
              COLS: tl.constexpr, VBLOCK: tl.constexpr):
    k = tl.program_id(0)
    eps1 = tl.load(sc)
    t = tl.load(table + 4 * k)
    start = tl.load(table + 4 * k + 1)
    count = tl.load(table + 4 * k + 2)
    n = tl.load(meta + 4 * t)
    m = tl.load(meta + 4 * t + 1)
    b2 = tl.load(hp + 3 * t).to(tl.float32)
    c2 = tl.load(hp + 3 * t + 1).to(tl.float32)
    pp, gp = _ptr(addr, 0, t, T, DT), _ptr(addr, 1, t, T, DT)
    if n > 0:
        cp = tl.load(table + 4 * k + 3)
        rows = start + tl.arange(0, ROWS)
        rmask = tl.arange(0, ROWS) < count
        rsum = tl.zeros((ROWS,), tl.float32)
        pacc = tl.zeros((ROWS, COLS), tl.float32)
        for c0 in range(0, m, COLS):
            cols = c0 + tl.arange(0, COLS)
            cmask = cols < m
            mask = rmask[:, None] & cmask[None, :]
            idx = rows[:, None] * m + cols[None, :]
            g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32)
            p = tl.load(pp + idx, mask=mask, other=0.0).to(tl.float32)
            x = tl.where(mask, g * g + eps1, 0.0)
            rsum += tl.sum(x, axis=1)
            tl.store(colpart + cp + cols, tl.sum(x, axis=0), mask=cmask)
            pacc += p * p
        rp = _ptr(addr, 2, t, T, DT) + rows
        r = tl.load(rp, mask=rmask, other=0.0).to(tl.float32) * b2 + tl.div_rn(rsum, m.to(tl.float32)) * c2
        tl.store(rp, exact(round_to(r, DT), DT), mask=rmask)
        tl.store(psum + k, tl.sum(tl.sum(pacc, axis=1), axis=0))
    else:
        offs = start + tl.arange(0, VBLOCK)
        mask = tl.arange(0, VBLOCK) < count
        g = tl.load(gp + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(pp + offs, mask=mask, other=0.0).to(tl.float32)
        vp = _ptr(addr, 4, t, T, DT) + offs
        v = round_to(tl.load(vp, mask=mask, other=1.0).to(tl.float32) * b2 + (g * g + eps1) * c2, DT)
        tl.store(vp, exact(v, DT), mask=mask)
        u = tl.where(mask, g * tl.div_rn(1.0, tl.sqrt_rn(v)), 0.0)
        tl.store(usum + k, tl.sum(u * u, axis=0))
        tl.store(psum + k, tl.sum(p * p, axis=0))


@triton.jit
def _af_factors(addr, meta, table, jobs, hp, colpart, means, T, DT: tl.constexpr, ROWS: tl.constexpr,
                COLS: tl.constexpr, RBLOCK: tl.constexpr):
    q = tl.program_id(0)
    kind = tl.load(jobs + 5 * q)
    t = tl.load(jobs + 5 * q + 1)
    j = tl.load(jobs + 5 * q + 2)
    c0 = tl.load(jobs + 5 * q + 3)
    b0 = tl.load(jobs + 5 * q + 4)
    n = tl.load(meta + 4 * t)
    m = tl.load(meta + 4 * t + 1)
    if kind == 0:  # columns c0.. of matrix j: add the partial sums of its blocks b0.. (one per ROWS rows)
        cols = c0 + tl.arange(0, COLS)
        cmask = cols < m
        s = tl.zeros((COLS,), tl.float32)
        for b in range(b0, b0 + tl.cdiv(n, ROWS)):
            s += tl.load(colpart + tl.load(table + 4 * b + 3) + cols, mask=cmask, other=0.0)
        b2 = tl.load(hp + 3 * t).to(tl.float32)
        c2 = tl.load(hp + 3 * t + 1).to(tl.float32)
        cp = _ptr(addr, 3, t, T, DT) + j * m + cols
        c = tl.load(cp, mask=cmask, other=0.0).to(tl.float32) * b2 + tl.div_rn(s, n.to(tl.float32)) * c2
        tl.store(cp, exact(round_to(c, DT), DT), mask=cmask)
    else:  # the mean of matrix j's row statistics
        rp = _ptr(addr, 2, t, T, DT) + j * n
        s = tl.zeros((RBLOCK,), tl.float32)
        for r0 in range(0, n, RBLOCK):
            r = r0 + tl.arange(0, RBLOCK)
            s += tl.load(rp + r, mask=r < n, other=0.0).to(tl.float32)
        tl.store(means + tl.load(meta + 4 * t + 2) + j, tl.div_rn(tl.sum(s, axis=0), n.to(tl.float32)))


@triton.jit
def _row_factor(addr, meta, means, t, start, rows, rmask, n, T, DT: tl.constexpr):
    """1/sqrt(R/mean(R)) for ``rows`` (all in the matrix of row ``start``)."""
    mean = tl.load(means + tl.load(meta + 4 * t + 2) + start // n)
    r = tl.load(_ptr(addr, 2, t, T, DT) + rows, mask=rmask, other=1.0).to(tl.float32)
    return tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(r, mean)))


@triton.jit
def _af_usum(addr, meta, table, means, usum, T, DT: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    k = tl.program_id(0)
    t = tl.load(table + 4 * k)
    n = tl.load(meta + 4 * t)
    if n > 0:
        m = tl.load(meta + 4 * t + 1)
        start = tl.load(table + 4 * k + 1)
        rows = start + tl.arange(0, ROWS)
        rmask = tl.arange(0, ROWS) < tl.load(table + 4 * k + 2)
        rf = _row_factor(addr, meta, means, t, start, rows, rmask, n, T, DT)
        gp = _ptr(addr, 1, t, T, DT)
        cvp = _ptr(addr, 3, t, T, DT) + (start // n) * m
        acc = tl.zeros((ROWS, COLS), tl.float32)
        for c0 in range(0, m, COLS):
            cols = c0 + tl.arange(0, COLS)
            cmask = cols < m
            mask = rmask[:, None] & cmask[None, :]
            g = tl.load(gp + rows[:, None] * m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            cf = tl.div_rn(1.0, tl.sqrt_rn(tl.load(cvp + cols, mask=cmask, other=1.0).to(tl.float32)))
            u = tl.where(mask, g * rf[:, None] * cf[None, :], 0.0)
            acc += u * u
        tl.store(usum + k, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _af_scalars(first, sizes, hp, usum, psum, scal, sc, SCALE: tl.constexpr, DECAY: tl.constexpr,
                RBLOCK: tl.constexpr):
    t = tl.program_id(0)
    clip, eps2, wd = tl.load(sc + 1), tl.load(sc + 2), tl.load(sc + 3)
    lo = tl.load(first + t)
    hi = tl.load(first + t + 1)
    su = tl.zeros((RBLOCK,), tl.float64)
    sp = tl.zeros((RBLOCK,), tl.float64)
    for k0 in range(lo, hi, RBLOCK):
        k = k0 + tl.arange(0, RBLOCK)
        su += tl.load(usum + k, mask=k < hi, other=0.0).to(tl.float64)
        sp += tl.load(psum + k, mask=k < hi, other=0.0).to(tl.float64)
    root = tl.sqrt(tl.load(sizes + t).to(tl.float64))
    # as the functional: float(t.norm()) is a float32 norm, the rest Python (float64) arithmetic
    rms_u = tl.sqrt(tl.sum(su, axis=0)).to(tl.float32).to(tl.float64) / root
    denom = tl.maximum(rms_u / clip, 1.0)
    lr = tl.load(hp + 3 * t + 2)
    alpha = lr
    if SCALE:
        rms_p = tl.sqrt(tl.sum(sp, axis=0)).to(tl.float32).to(tl.float64) / root
        alpha = lr * tl.maximum(rms_p, eps2)
    decay = tl.full((), 1.0, tl.float64)
    if DECAY:
        decay = 1.0 - wd * alpha
    tl.store(scal + 3 * t, denom.to(tl.float32))
    tl.store(scal + 3 * t + 1, alpha.to(tl.float32))
    tl.store(scal + 3 * t + 2, decay.to(tl.float32))


@triton.jit
def _af_apply(addr, meta, table, means, scal, T, sc, DT: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
              VBLOCK: tl.constexpr, MOMENTUM: tl.constexpr):
    k = tl.program_id(0)
    b1, c1, sign = tl.load(sc + 4), tl.load(sc + 5), tl.load(sc + 6)
    t = tl.load(table + 4 * k)
    start = tl.load(table + 4 * k + 1)
    count = tl.load(table + 4 * k + 2)
    n = tl.load(meta + 4 * t)
    denom = tl.load(scal + 3 * t)
    alpha = tl.load(scal + 3 * t + 1)
    decay = tl.load(scal + 3 * t + 2)
    pp, gp, mp = _ptr(addr, 0, t, T, DT), _ptr(addr, 1, t, T, DT), _ptr(addr, 5, t, T, DT)
    if n > 0:
        m = tl.load(meta + 4 * t + 1)
        rows = start + tl.arange(0, ROWS)
        rmask = tl.arange(0, ROWS) < count
        rf = _row_factor(addr, meta, means, t, start, rows, rmask, n, T, DT)
        cvp = _ptr(addr, 3, t, T, DT) + (start // n) * m
        for c0 in range(0, m, COLS):
            cols = c0 + tl.arange(0, COLS)
            cmask = cols < m
            mask = rmask[:, None] & cmask[None, :]
            idx = rows[:, None] * m + cols[None, :]
            g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32) * sign
            cf = tl.div_rn(1.0, tl.sqrt_rn(tl.load(cvp + cols, mask=cmask, other=1.0).to(tl.float32)))
            u = tl.div_rn(g * rf[:, None] * cf[None, :], denom) * alpha
            if MOMENTUM:
                u = round_to(tl.load(mp + idx, mask=mask, other=0.0).to(tl.float32) * b1 + u * c1, DT)
                tl.store(mp + idx, exact(u, DT), mask=mask)
            p = tl.load(pp + idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(pp + idx, exact(round_to(p * decay - u, DT), DT), mask=mask)
    else:
        offs = start + tl.arange(0, VBLOCK)
        mask = tl.arange(0, VBLOCK) < count
        g = tl.load(gp + offs, mask=mask, other=0.0).to(tl.float32) * sign
        v = tl.load(_ptr(addr, 4, t, T, DT) + offs, mask=mask, other=1.0).to(tl.float32)
        u = tl.div_rn(g * tl.div_rn(1.0, tl.sqrt_rn(v)), denom) * alpha
        if MOMENTUM:
            u = round_to(tl.load(mp + offs, mask=mask, other=0.0).to(tl.float32) * b1 + u * c1, DT)
            tl.store(mp + offs, exact(u, DT), mask=mask)
        p = tl.load(pp + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(pp + offs, exact(round_to(p * decay - u, DT), DT), mask=mask)


def _layout(params: Sequence[Tensor], factored: Sequence[bool]) -> list[list[int]]:
    """Host tables: meta ``(n, m, mean offset, first block)`` per tensor, the block table
    ``(tensor, start, count, colpart offset)``, the factor jobs and the first block of each tensor."""
    meta: list[int] = []
    table: list[int] = []
    jobs: list[int] = []
    first = [0]
    means = cp = 0
    for t, (p, fac) in enumerate(zip(params, factored)):
        b_first = len(table) // 4
        if fac:
            n, m = p.shape[-2], p.shape[-1]
            batch = p.numel() // (n * m)
            meta += [n, m, means, b_first]
            for j in range(batch):
                b0 = len(table) // 4
                for r0 in range(j * n, (j + 1) * n, ROWS):
                    table += [t, r0, min(ROWS, (j + 1) * n - r0), cp]
                    cp += m
                jobs += [x for c0 in range(0, m, COLS) for x in (0, t, j, c0, b0)] + [1, t, j, 0, b0]
            means += batch
        else:
            meta += [0, p.numel(), 0, b_first]
            for s in range(0, p.numel(), VBLOCK):
                table += [t, s, min(VBLOCK, p.numel() - s), -1]
        first.append(len(table) // 4)
    return [meta, table, jobs, first, [cp, means]]


def _step_table(steps: Sequence[int] | Sequence[Tensor], lr: float | Tensor | None, relative_step: bool,
                warmup_init: bool, decay_rate: float, device: torch.device) -> Tensor:
    """``(T, 3)`` float64 ``(beta2, 1 - beta2, rho)`` per tensor, as the functional computes them.

    Integer steps are computed on the host; 0-d step tensors on their device (no sync; ``lr``
    may then be a 0-d device tensor).
    """
    if not relative_step and lr is None:
        raise ValueError("Invalid lr: None (an explicit lr is needed when relative_step=False)")
    if steps and isinstance(steps[0], Tensor):
        t = torch.stack([s.reshape(()) for s in steps]).to(device=device, dtype=torch.float64)  # one kernel, no sync
        b2 = 1.0 - t ** decay_rate
        if relative_step:
            cap = 1e-6 * t if warmup_init else torch.full_like(t, 1e-2)
            rho = torch.minimum(cap, 1.0 / torch.sqrt(t))
        else:
            rho = wide(lr, device) * torch.ones_like(t) if isinstance(lr, Tensor) else torch.full_like(t, float(lr))
        return torch.stack([b2, 1.0 - b2, rho], dim=1)
    rows = []
    for s in steps:
        b2 = 1.0 - float(s) ** decay_rate
        if relative_step:
            rho = min(1e-6 * s if warmup_init else 1e-2, 1.0 / math.sqrt(s))
        else:
            rho = float(lr)
        rows.append((b2, 1.0 - b2, rho))
    return to_device(torch.tensor(rows, dtype=torch.float64), device)


def adafactor(params: Sequence[Tensor], grads: Sequence[Tensor], row_var: Sequence[Tensor | None],
              col_var: Sequence[Tensor | None], variance: Sequence[Tensor | None], exp_avg: Sequence[Tensor | None],
              *, steps: Sequence[int] | Sequence[Tensor], lr: float | Tensor | None, relative_step: bool,
              warmup_init: bool, decay_rate: float, eps1: float, eps2: float, clip_threshold: float,
              beta1: float | Tensor | None, weight_decay: float | Tensor = 0.0, scale_parameter: bool = True,
              maximize: bool = False, capturable: bool = False) -> None:
    """Adafactor (:func:`descent.functional.adafactor`) on every tensor of a bucket: five launches.

    A tensor is factored when its ``row_var`` and ``col_var`` are given (then ``row_var``
    holds ``numel / m`` and ``col_var`` ``numel / n`` elements, as the functional's
    ``[..., n, 1]`` and ``[..., 1, m]``), else its ``variance`` is used. The step size is
    :func:`descent.functional.adafactor_lr` of each tensor's step.

    Args:
        params, grads, row_var, col_var, variance, exp_avg: the bucket (``exp_avg`` is
            used only when ``beta1`` is set).
        steps: per tensor, the step after incrementing: ints, or 0-d step tensors on
            the device (then nothing is read back to the host).
        lr, relative_step, warmup_init: the step size rule (:func:`descent.functional.adafactor_lr`).
        decay_rate, eps1, eps2, clip_threshold, beta1, weight_decay, scale_parameter,
            maximize: as in :func:`descent.functional.adafactor`.
        capturable: make every scalar on the device (``lr``, ``beta1`` and ``weight_decay``
            may be 0-d device tensors; pass step tensors): no host sync, so a CUDA graph can
            capture the launches. Step tensors alone imply it.

    Raises:
        ValueError: a tensor with neither both factors nor ``variance``, ``beta1`` set
            without ``exp_avg``, or a bucket the kernels cannot take.

    Example:
        >>> import torch  # doctest: +SKIP
        >>> p, g = [torch.ones(4, 3, device="cuda")], [torch.ones(4, 3, device="cuda")]
        >>> r, c = [torch.zeros(4, 1, device="cuda")], [torch.zeros(1, 3, device="cuda")]
        >>> adafactor(p, g, r, c, [None], [None], steps=[1], lr=None, relative_step=True, warmup_init=False,
        ...           decay_rate=-0.8, eps1=1e-30, eps2=1e-3, clip_threshold=1.0, beta1=None)
    """
    use_m = beta1 is not None
    keep = positions(params, {"grads": grads, "row_var": row_var, "col_var": col_var, "variance": variance,
                              "exp_avg": exp_avg if use_m else None}, same_shape=("grads", "variance", "exp_avg"))
    if len(steps) != len(params):
        raise ValueError(f"Invalid steps: {len(steps)} values for {len(params)} parameters")
    factored = [row_var[i] is not None and col_var[i] is not None and params[i].dim() >= 2 for i in keep]
    for i, fac in zip(keep, factored):
        if not fac and variance[i] is None:
            raise ValueError(f"Invalid state of params[{i}]: needs row_var and col_var (factored) or variance")
        if fac:  # the kernels index the factors by row and column: their sizes must fit
            n, m = params[i].shape[-2], params[i].shape[-1]
            if row_var[i].numel() != params[i].numel() // m or col_var[i].numel() != params[i].numel() // n:
                raise ValueError(f"Invalid row_var/col_var of params[{i}]: {tuple(row_var[i].shape)} and "
                                 f"{tuple(col_var[i].shape)} for a parameter of shape {tuple(params[i].shape)}")
        if use_m and exp_avg[i] is None:
            raise ValueError(f"Invalid exp_avg[{i}]: None while beta1={beta1} is set")
    if not keep:
        return
    cols = [[c[i] for i in keep] for c in (params, grads, row_var, col_var, variance)]
    cols.append([exp_avg[i] for i in keep] if use_m else None)
    ps, count, device = cols[0], len(keep), params[0].device
    key = ("adafactor", ROWS, COLS, VBLOCK, tuple(factored), tuple(tuple(p.shape) for p in ps), pointers_key(*cols))
    meta, table, jobs, first, _, addr, sizes = cached_ints(
        key, device, lambda: _layout(ps, factored) + [address_rows(cols, count), [p.numel() for p in ps]])
    nb, nj = table.numel() // 4, jobs.numel() // 5
    mats = [(p.numel() // (p.shape[-2] * p.shape[-1]), p.shape[-2], p.shape[-1]) for p, f in zip(ps, factored) if f]
    n_cp, n_means = sum(b * -(-n // ROWS) * m for b, n, m in mats), sum(b for b, _, _ in mats)
    dt = TL[params[0].dtype]
    hp = _step_table([steps[i] for i in keep], lr, relative_step, warmup_init, decay_rate, device)
    f32 = dict(dtype=torch.float32, device=device)
    colpart, means = torch.empty(max(n_cp, 1), **f32), torch.empty(max(n_means, 1), **f32)
    usum, psum, scal = torch.zeros(nb, **f32), torch.empty(nb, **f32), torch.empty((count, 3), **f32)
    b1 = 0.0 if beta1 is None else wide(beta1, device)
    on_device = capturable or isinstance(steps[keep[0]], Tensor)  # step tensors: nothing crosses to the device
    sc = scalars((eps1, clip_threshold, eps2, weight_decay, b1, 1.0 - b1, sign_of(maximize)), device, on_device)
    shapes = dict(ROWS=ROWS, COLS=COLS)
    _af_stats[(nb,)](addr, meta, table, hp, colpart, usum, psum, count, sc, DT=dt, VBLOCK=VBLOCK, **shapes, **LAUNCH)
    if nj:
        _af_factors[(nj,)](addr, meta, table, jobs, hp, colpart, means, count, DT=dt, RBLOCK=_RBLOCK, **shapes,
                           **LAUNCH)
        _af_usum[(nb,)](addr, meta, table, means, usum, count, DT=dt, **shapes, **LAUNCH)
    decay = isinstance(weight_decay, Tensor) or weight_decay != 0
    _af_scalars[(count,)](first, sizes, hp, usum, psum, scal, sc, SCALE=bool(scale_parameter), DECAY=decay,
                          RBLOCK=_RBLOCK, **LAUNCH)
    _af_apply[(nb,)](addr, meta, table, means, scal, count, sc, DT=dt, VBLOCK=VBLOCK, MOMENTUM=use_m, **shapes,
                     **LAUNCH)
