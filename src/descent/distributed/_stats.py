"""Whole-tensor statistics of sharded parameters: local partial sums, one collective per bucket.

LAMB's trust ratio needs :math:`\\|\\theta\\|` and :math:`\\|u\\|`, Adafactor its row and
column means and two RMS values, MARS the norm of its corrected gradient :math:`c_t` (and,
with ``cautious=True``, the count of agreeing signs); under FSDP2 each rank holds a slice of every tensor.
Each rank computes the sums over its slice for the whole bucket, the sums are
concatenated and reduced with one ``all_reduce`` (Adafactor needs a second for the RMS of
its update, which depends on the first), and the step goes on locally. Only the order
of the additions differs from one process, so results agree to float rounding (about
1e-7 relative in float32), not bit for bit.

On the ``"fused"`` backend (CPU, the Numba passes) a bucket runs in waves
(:func:`._comm.waves`): every wave's first pass, each starting its ``all_reduce`` at once, then
the later passes as the sums arrive (:func:`._comm.run_stages`), so the reductions overlap the
passes; each tensor's sums, hence the numbers, are the same as in one wave.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ._comm import run_stages, sum_across, waves
from ._layout import is_sharded, local, shard_dim, shard_group, shard_rank

__all__ = ["lamb_step", "adafactor_step", "mars_step", "square_sums"]


def _counted(p: Tensor) -> bool:
    """Whether this rank's local part counts in a sum over the mesh (a replicated tensor counts once)."""
    return is_sharded(p) or shard_rank(p) == 0


def square_sums(tensors: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """This rank's share of each tensor's sum of squares (one multi-tensor norm), as float64 0-d tensors."""
    if not tensors:
        return []
    norms = torch._foreach_norm([local(t) for t in tensors], 2)
    return [n.double().square() if _counted(p) else torch.zeros((), dtype=torch.float64, device=n.device)
            for n, p in zip(norms, params)]


def _hyper(opt: Any, group: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The functional's keyword arguments for this group and step (the declaration's mapping)."""
    hp = opt.declaration.hyper(group)
    hp.update((k, v) for k, v in (overrides or {}).items() if v is not None)
    return hp


def lamb_step(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
              overrides: Mapping[str, Any] | None = None, backend: str | None = None) -> None:
    """LAMB on local shards with the two norms of every tensor reduced in one ``all_reduce``.

    With the ``"fused"`` backend on CPU, the Numba kernel's two passes run around the
    reduction (:func:`descent.kernels.sharded.lamb_stages`); otherwise multi-tensor ops.
    """
    from ..kernels import sharded
    from ..optim._base import advance_steps

    hp = _hyper(opt, group, overrides)
    states = [opt._state_of(p, group) for p in params]
    b1, b2, eps, wd = float(hp["beta1"]), float(hp["beta2"]), float(hp["eps"]), float(hp["weight_decay"])
    steps = advance_steps([s["step"] for s in states])
    ps, gs = [local(p) for p in params], [local(g) for g in grads]
    ms, vs = [local(s["exp_avg"]) for s in states], [local(s["exp_avg_sq"]) for s in states]
    if backend == "fused" and sharded.supports(ps, gs, ms, vs):
        run_stages([sharded.lamb_stages(
            *([ts[i] for i in run] for ts in (ps, gs, ms, vs)), steps=[steps[i] for i in run], lr=float(hp["lr"]),
            beta1=b1, beta2=b2, eps=eps, weight_decay=wd, clamp_value=hp["clamp_value"],
            bias_correction=hp["bias_correction"], maximize=hp["maximize"],
            counted=[_counted(params[i]) for i in run]) for run in waves([p.numel() for p in params])],
            shard_group(params[0]))
        return
    if hp["maximize"]:
        gs = torch._foreach_neg(gs)
    torch._foreach_lerp_(ms, gs, 1 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
    bias = hp["bias_correction"]
    dirs = torch._foreach_div(ms, [1 - b1 ** t if bias else 1.0 for t in steps])
    den = torch._foreach_div(vs, [1 - b2 ** t if bias else 1.0 for t in steps])
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, eps)
    torch._foreach_div_(dirs, den)
    if wd != 0:
        torch._foreach_add_(dirs, ps, alpha=wd)
    sums = torch.stack(sum_across(square_sums(ps, params) + square_sums(dirs, params), shard_group(params[0])))
    norms = sums.sqrt().to(ps[0].dtype)
    ratio = F.trust_ratio(norms[: len(ps)], norms[len(ps):], hp["clamp_value"]) * -float(hp["lr"])
    torch._foreach_mul_(dirs, ratio.unbind())
    torch._foreach_add_(ps, dirs)


def _embed(part: Tensor, full_shape: torch.Size, dim: int | None, start: int) -> Tensor:
    """A zero tensor of ``full_shape`` with ``part`` placed at ``start`` along ``dim`` (the local rows)."""
    if dim is None or part.shape == full_shape:
        return part
    out = part.new_zeros(full_shape)
    out.narrow(dim, start, part.shape[dim]).copy_(part)
    return out


def _factored_partials(p: Tensor, g2: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's full-shape contributions to the row and column means of ``g2`` (zeros elsewhere)."""
    from ._layout import local_range

    dim = shard_dim(p)
    n, m = p.shape[-2], p.shape[-1]
    start = local_range(p)[0]
    last = p.ndim - 1
    row = g2.sum(dim=-1, keepdim=True) / m if dim == last else g2.mean(dim=-1, keepdim=True)
    col = g2.sum(dim=-2, keepdim=True) / n if dim == last - 1 else g2.mean(dim=-2, keepdim=True)
    if not _counted(p):
        row, col = torch.zeros_like(row), torch.zeros_like(col)
    row_dim = None if dim in (None, last) else dim
    col_dim = None if dim in (None, last - 1) else dim
    return (_embed(row, p.shape[:-1] + (1,), row_dim, start),
            _embed(col, p.shape[:-2] + (1, m), col_dim, start))


def _factored(s: dict[str, Any]) -> bool:
    return s.get("row_var") is not None and s.get("col_var") is not None


def adafactor_step(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   overrides: Mapping[str, Any] | None = None, backend: str | None = None) -> None:
    """Adafactor on local shards: row/column means and RMS values reduced over the mesh (two ``all_reduce``).

    The elementwise parts are multi-tensor ops over the bucket; the row/column means are
    one reduction per factored tensor (as :func:`descent.kernels.foreach.adafactor`).
    """
    from ..optim._base import advance_steps

    hp = _hyper(opt, group, overrides)
    states = [opt._state_of(p, group) for p in params]
    opt.declaration.ensure_optional(group, params, states)  # exp_avg when beta1 was switched on mid-run
    steps = advance_steps([s["step"] for s in states])
    beta2 = [1.0 - t ** hp["decay_rate"] for t in steps]
    mesh_group = shard_group(params[0])
    if backend == "fused":  # the Numba passes where a tensor fits them, eager ops for the rest
        rest = _adafactor_fused(hp, params, grads, states, steps, mesh_group)
        if not rest:
            return
        params, grads, states, steps, beta2 = ([xs[i] for i in rest] for xs in (params, grads, states, steps, beta2))
    gs = [local(g) for g in grads]
    gs = torch._foreach_neg(gs) if hp["maximize"] else gs
    g2s = torch._foreach_mul(gs, gs)
    torch._foreach_add_(g2s, float(hp["eps1"]))
    fac = [i for i, s in enumerate(states) if _factored(s)]
    vec = [i for i in range(len(params)) if i not in set(fac)]
    partials = [t for i in fac for t in _factored_partials(params[i], g2s[i])]
    first = sum_across(partials + square_sums(params, params), mesh_group)
    updates: list[Tensor] = [gs[0]] * len(params)
    for k, i in enumerate(fac):
        p, s, b = params[i], states[i], beta2[i]
        row, col = local(s["row_var"]), local(s["col_var"])  # replicated: the full statistics
        row.mul_(b).add_(first[2 * k].to(row.dtype) * (1 - b))
        col.mul_(b).add_(first[2 * k + 1].to(col.dtype) * (1 - b))
        r = row / row.mean(dim=-2, keepdim=True)
        updates[i] = gs[i] * _rows(r, p).rsqrt() * _cols(col, p).rsqrt()
    if vec:
        var = [local(states[i]["variance"]) for i in vec]
        torch._foreach_mul_(var, [beta2[i] for i in vec])
        torch._foreach_add_(var, torch._foreach_mul([g2s[i] for i in vec], [1 - beta2[i] for i in vec]))
        for i, u in zip(vec, torch._foreach_mul([gs[i] for i in vec], torch._foreach_rsqrt(var))):
            updates[i] = u
    u_sq = torch.stack(sum_across(square_sums(updates, params), mesh_group))
    p_sq = torch.stack(first[len(partials):])
    _adafactor_apply(hp, params, updates, states, steps, u_sq, p_sq)


def _adafactor_fused(hp: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
                     steps: list[int], mesh_group: Any) -> list[int]:
    """The Numba kernel's passes on the local rows (:func:`descent.kernels.sharded.adafactor_stages`) for
    the tensors that fit it (CPU float; 1-D, or factored ``[..., n, m]`` whole, split along dim 0 or by rows
    ``n``); returns the indices of the others (split by columns or along a middle batch dimension)."""
    from ..kernels import sharded
    from ._layout import local_range

    fac = [_factored(s) for s in states]
    ps, gs = [local(p) for p in params], [local(g) for g in grads]
    cols = {k: [local(s.get(k)) if s.get(k) is not None else None for s in states]
            for k in ("row_var", "col_var", "variance", "exp_avg")}
    by_rows = [shard_dim(p) in (None, 0, p.ndim - 2) for p in params]
    if hp["beta1"] is None:
        cols["exp_avg"] = [None] * len(params)
    fits = [sharded.adafactor_fits([ps[i], gs[i]], [fac[i]] * 2, [by_rows[i]] * 2, [c[i] for c in cols.values()])
            for i in range(len(params))]  # global shapes and layouts: the same answer on every rank
    rest = [i for i, ok in enumerate(fits) if not ok]
    if len(rest) == len(params):
        return rest
    keep = [i for i, ok in enumerate(fits) if ok]
    params, steps, ps, gs, fac = ([xs[i] for i in keep] for xs in (params, steps, ps, gs, fac))
    cols = {k: [c[i] for i in keep] for k, c in cols.items()}
    first_row = [local_range(p)[0] if is_sharded(p) and shard_dim(p) == p.ndim - 2 else 0 for p in params]
    first_matrix = [local_range(p)[0] * math.prod(p.shape[1:-2]) if p.ndim > 2 and shard_dim(p) == 0 else 0
                    for p in params]
    counted, numels = [_counted(p) for p in params], [p.numel() for p in params]
    run_stages([sharded.adafactor_stages(
        *([ts[i] for i in run] for ts in (ps, gs, *cols.values())), first_row=[first_row[i] for i in run],
        first_matrix=[first_matrix[i] for i in run],
        counted=[counted[i] for i in run], numels=[numels[i] for i in run], steps=[steps[i] for i in run],
        lr=hp["lr"], relative_step=hp["relative_step"], warmup_init=hp["warmup_init"],
        decay_rate=float(hp["decay_rate"]), eps1=float(hp["eps1"]), eps2=float(hp["eps2"]),
        clip_threshold=float(hp["clip_threshold"]), beta1=hp["beta1"], weight_decay=float(hp["weight_decay"]),
        scale_parameter=hp["scale_parameter"], maximize=hp["maximize"]) for run in waves(numels)], mesh_group)
    return rest


def _rows(r: Tensor, p: Tensor) -> Tensor:
    """The local rows of a full row statistic ``[..., n, 1]``."""
    from ._layout import local_range

    dim = shard_dim(p)
    return r if dim in (None, p.ndim - 1) else r.narrow(dim, *local_range(p))


def _cols(c: Tensor, p: Tensor) -> Tensor:
    """The local columns of a full column statistic ``[..., 1, m]``."""
    from ._layout import local_range

    dim = shard_dim(p)
    return c if dim in (None, p.ndim - 2) else c.narrow(dim, *local_range(p))


def _adafactor_apply(hp: dict[str, Any], params: list[Tensor], updates: list[Tensor], states: list[dict[str, Any]],
                     steps: list[int], u_sq: Tensor, p_sq: Tensor) -> None:
    """Clip, scale, momentum, decay and apply, as :func:`descent.functional.adafactor` (given the sums of squares)."""
    ps = [local(p) for p in params]
    n = torch.tensor([max(p.numel(), 1) for p in params], dtype=torch.float64, device=u_sq.device)
    rms_u, rms_p = (u_sq / n).sqrt(), (p_sq / n).sqrt()
    lr = torch.tensor([F.adafactor_lr(t, hp["lr"], relative_step=hp["relative_step"], warmup_init=hp["warmup_init"])
                       for t in steps], dtype=torch.float64, device=u_sq.device)
    alpha = lr * rms_p.clamp(min=float(hp["eps2"])) if hp["scale_parameter"] else lr
    scale = alpha / (rms_u / float(hp["clip_threshold"])).clamp(min=1.0)
    torch._foreach_mul_(updates, scale.to(ps[0].dtype).unbind())
    if hp["beta1"] is not None:
        b1 = float(hp["beta1"])
        ms = [local(s["exp_avg"]) for s in states]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, torch._foreach_mul(updates, 1 - b1))
        updates = ms
    wd = float(hp["weight_decay"])
    if wd != 0:
        torch._foreach_mul_(ps, (1 - wd * alpha).to(ps[0].dtype).unbind())
    torch._foreach_sub_(ps, updates)


def mars_step(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
              overrides: Mapping[str, Any] | None = None, backend: str | None = None) -> None:
    """MARS on local shards: the norms of :math:`c_t` in one ``all_reduce`` (the cautious counts in a second).

    The rest of :func:`descent.functional.mars` is elementwise and runs on the local rows: on the
    ``"fused"`` backend (CPU) with the Numba kernel's passes (:func:`descent.kernels.sharded.mars_stages`).
    """
    from ..kernels import sharded
    from ..optim._base import advance_steps

    hp = _hyper(opt, group, overrides)
    states = [opt._state_of(p, group) for p in params]
    steps = advance_steps([s["step"] for s in states])
    b1, b2, mesh_group = hp["beta1"], hp["beta2"], shard_group(params[0])
    cols = [[local(s[k]) for s in states] for k in ("exp_avg", "exp_avg_sq", "last_grad")]
    ps, gs = [local(p) for p in params], [local(g) for g in grads]
    if backend == "fused" and not hp.get("cautious", False) and sharded.supports(ps, gs, *cols):
        counted = [_counted(p) for p in params]
        run_stages([sharded.mars_stages(
            *([ts[i] for i in run] for ts in (ps, gs, *cols)), counted=[counted[i] for i in run],
            steps=[steps[i] for i in run], lr=float(hp["lr"]), beta1=float(b1), beta2=float(b2), eps=float(hp["eps"]),
            gamma=float(hp["gamma"]), weight_decay=float(hp["weight_decay"]), maximize=hp["maximize"])
            for run in waves([p.numel() for p in params])], mesh_group)
        return
    gs = [-local(g) if hp["maximize"] else local(g) for g in grads]
    cs = [(g - local(s["last_grad"])).mul_(hp["gamma"] * b1 / (1 - b1)).add_(g) for g, s in zip(gs, states)]
    for c, n, s in zip(cs, sum_across(square_sums(cs, params), mesh_group), states):
        norm = math.sqrt(float(n))
        if norm > 1.0:
            c.div_(norm)
        local(s["exp_avg"]).lerp_(c, 1 - b1)
        local(s["exp_avg_sq"]).mul_(b2).addcmul_(c, c, value=1 - b2)
    ms = [local(s["exp_avg"]) for s in states]
    if hp.get("cautious", False):
        masks = [(m * g > 0).to(m.dtype) for m, g in zip(ms, gs)]
        counts = sum_across([mk.sum(dtype=torch.float64) * (1.0 if _counted(p) else 0.0)
                             for mk, p in zip(masks, params)], mesh_group)
        ms = [m * mk * (p.numel() / (float(k) + 1.0)) for m, mk, p, k in zip(ms, masks, params, counts)]
    for p, g, m, s, t in zip(params, gs, ms, states, steps):
        lp = local(p)
        denom = (local(s["exp_avg_sq"]).sqrt() / math.sqrt(1 - b2 ** t)).add_(hp["eps"])
        update = (m / (1 - b1 ** t)).div_(denom)
        if hp["weight_decay"] != 0:
            update.add_(lp, alpha=hp["weight_decay"])
        lp.add_(update, alpha=-hp["lr"])
        local(s["last_grad"]).copy_(g)
