"""Whole-tensor statistics of sharded parameters: local partial sums, one collective per bucket.

LAMB's trust ratio needs :math:`\\|\\theta\\|` and :math:`\\|u\\|`, Adafactor its row and
column means and two RMS values, MARS the norm of its corrected gradient :math:`c_t` (and,
with ``cautious=True``, the count of agreeing signs); under FSDP2 each rank holds a slice of every tensor.
Each rank computes the sums over its slice for the whole bucket, the sums are
concatenated and reduced with one ``all_reduce`` (Adafactor needs a second for the RMS of
its update, which depends on the first), and the step goes on locally. Only the order
of the additions differs from one process, so results agree to float rounding (about
1e-7 relative in float32), not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ._comm import sum_across
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
    return [n.double().square() if _counted(p) else torch.zeros((), dtype=torch.float64)
            for n, p in zip(norms, params)]


def _hyper(opt: Any, group: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The functional's keyword arguments for this group and step (the declaration's mapping)."""
    hp = opt.declaration.hyper(group)
    hp.update((k, v) for k, v in (overrides or {}).items() if v is not None)
    return hp


def lamb_step(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
              overrides: Mapping[str, Any] | None = None) -> None:
    """LAMB on local shards with the two norms of every tensor reduced in one ``all_reduce``."""
    from ..optim._base import advance_steps

    hp = _hyper(opt, group, overrides)
    states = [opt._state_of(p, group) for p in params]
    b1, b2 = hp["beta1"], hp["beta2"]
    steps = advance_steps([s["step"] for s in states])
    dirs, ps = [], [local(p) for p in params]
    for p, g, s, t in zip(ps, (local(g) for g in grads), states, steps):
        m, v = local(s["exp_avg"]), local(s["exp_avg_sq"])
        if hp["maximize"]:
            g = -g
        m.mul_(b1).add_(g * (1 - b1))
        v.mul_(b2).add_(g * g * (1 - b2))
        dirs.append(F.lamb_direction(p, m, v, step=t, beta1=b1, beta2=b2, eps=hp["eps"],
                                     weight_decay=hp["weight_decay"], bias_correction=hp["bias_correction"]))
    sums = sum_across(square_sums(ps, params) + square_sums(dirs, params), shard_group(params[0]))
    lr = float(hp["lr"])
    for k, (p, u) in enumerate(zip(ps, dirs)):
        w_norm = sums[k].sqrt().to(p.dtype)
        u_norm = sums[len(ps) + k].sqrt().to(p.dtype)
        ratio = F.trust_ratio(w_norm, u_norm, hp["clamp_value"])
        p.sub_(u * (ratio * lr))


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


def adafactor_step(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   overrides: Mapping[str, Any] | None = None) -> None:
    """Adafactor on local shards: row/column means and RMS values reduced over the mesh (two ``all_reduce``)."""
    from ..optim._base import advance_steps

    hp = _hyper(opt, group, overrides)
    states = [opt._state_of(p, group) for p in params]
    opt.declaration.ensure_optional(group, params, states)  # exp_avg when beta1 was switched on mid-run
    steps = advance_steps([s["step"] for s in states])
    eps1, eps2 = hp["eps1"], hp["eps2"]
    mesh_group = shard_group(params[0])
    gs = [-local(g) if hp["maximize"] else local(g) for g in grads]
    g2s = [g * g + eps1 for g in gs]
    partials: list[Tensor] = []
    for p, g2, s in zip(params, g2s, states):
        if s.get("row_var") is not None and s.get("col_var") is not None:
            partials.extend(_factored_partials(p, g2))
    first = sum_across(partials + square_sums(params, params), mesh_group)
    means, p_sq = iter(first[:len(partials)]), first[len(partials):]
    updates = []
    for p, g, g2, s, t in zip(params, gs, g2s, states, steps):
        beta2 = 1.0 - t ** hp["decay_rate"]
        if s.get("row_var") is not None and s.get("col_var") is not None:
            row, col = local(s["row_var"]), local(s["col_var"])  # replicated: the full statistics
            row.mul_(beta2).add_(next(means).to(row.dtype) * (1 - beta2))
            col.mul_(beta2).add_(next(means).to(col.dtype) * (1 - beta2))
            r = row / row.mean(dim=-2, keepdim=True)
            updates.append(g * _rows(r, p).rsqrt() * _cols(col, p).rsqrt())
        else:
            var = local(s["variance"])
            var.mul_(beta2).add_(g2 * (1 - beta2))
            updates.append(g * var.rsqrt())
    u_sq = sum_across(square_sums(updates, params), mesh_group)
    for p, u, s, t, us, ps in zip(params, updates, states, steps, u_sq, p_sq):
        n = max(p.numel(), 1)
        _adafactor_apply(hp, p, u, s, t, math.sqrt(float(us) / n), math.sqrt(float(ps) / n), eps2)


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


def _adafactor_apply(hp: dict[str, Any], param: Tensor, update: Tensor, s: dict[str, Any], step: int,
                     rms_u: float, rms_p: float, eps2: float) -> None:
    """Clip, scale, momentum, decay and apply, as :func:`descent.functional.adafactor` (given the RMS values)."""
    p = local(param)
    lr = F.adafactor_lr(step, hp["lr"], relative_step=hp["relative_step"], warmup_init=hp["warmup_init"])
    update.div_(max(1.0, rms_u / hp["clip_threshold"]))
    alpha = lr * max(eps2, rms_p) if hp["scale_parameter"] else lr
    update.mul_(alpha)
    if hp["beta1"] is not None:
        m = local(s["exp_avg"])
        m.mul_(hp["beta1"]).add_(update * (1 - hp["beta1"]))
        update = m
    if hp["weight_decay"] != 0:
        p.mul_(1 - hp["weight_decay"] * alpha)
    p.sub_(update)


def mars_step(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
              overrides: Mapping[str, Any] | None = None) -> None:
    """MARS on local shards: the norms of :math:`c_t` in one ``all_reduce`` (the cautious counts in a second).

    The rest of :func:`descent.functional.mars` is elementwise and runs on the local rows.
    """
    from ..optim._base import advance_steps

    hp = _hyper(opt, group, overrides)
    states = [opt._state_of(p, group) for p in params]
    steps = advance_steps([s["step"] for s in states])
    b1, b2, mesh_group = hp["beta1"], hp["beta2"], shard_group(params[0])
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
        counts = sum_across([mk.sum(dtype=torch.float64) if _counted(p) else torch.zeros((), dtype=torch.float64)
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
