"""Matrix work on sharded parameters: each whole matrix is orthogonalized by one owner rank.

For Muon under FSDP2 every rank updates the momentum of its own rows (elementwise, exact),
then one all-to-all sends each matrix's shards to its owner, the owner runs Newton–Schulz
on the whole matrix, and a second all-to-all returns each rank its rows of the result.
Owners are assigned largest-first to the least-loaded rank by Newton–Schulz cost
(:func:`descent.distributed.assign_owners`), so each rank's share of the iteration falls
as 1/N. The matrices go in waves (:func:`descent.distributed._comm.waves`, the exchanges
asynchronous): while one wave's rows travel, the owners orthogonalize the previous wave. Bytes sent per step, summed over ranks: at most the matrices once in the
parameter dtype and once in the iteration dtype (``(N-1)/N`` of each), i.e. at most 2x
the matrices' bytes whatever N. The result equals one process's ``backend="loop"`` step
bit for bit (the same iteration on the same matrix).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..functional.muon import muon_lr_scale, muon_ns_dtype, newton_schulz
from ._comm import Pending, assign_owners, pipeline, start_exchange, waves
from ._layout import is_sharded, local, local_range, shard_count, shard_dim, shard_group, shard_rank, shard_shape

__all__ = ["muon_step", "ns_cost", "routes_to_matrix", "SCHEMES"]

#: "owner": one rank per matrix (default); "gather": every rank orthogonalizes every matrix (for comparison).
SCHEMES = ("owner", "gather")
_scheme = "owner"
#: Seconds this process spent in Newton–Schulz for sharded matrices (read by benchmarks/distributed_step.py).
ns_seconds = [0.0]


def ns_cost(p: Tensor) -> float:
    """Newton–Schulz work of a parameter, up to a constant: ``min(m, n)^2 max(m, n)`` of its matrix view."""
    rows = p.shape[0]
    cols = p.numel() // max(rows, 1)
    return float(min(rows, cols) ** 2 * max(rows, cols))


def _ns(u: Tensor, param: Tensor, hp: dict[str, Any]) -> Tensor:
    start = time.perf_counter()
    matrix = u.reshape(u.size(0), -1)
    dtype = muon_ns_dtype(hp["ns_dtype"], param)
    out = newton_schulz(matrix, hp["ns_steps"], hp["ns_coefficients"], hp["eps"], dtype, hp["ns_method"])
    ns_seconds[0] += time.perf_counter() - start
    return out


def _apply(p: Tensor, full_shape: torch.Size, ortho: Tensor, hp: dict[str, Any]) -> None:
    lr = hp["lr"]
    if hp["weight_decay"] != 0:
        p.mul_(1 - lr * hp["weight_decay"])
    p.add_(ortho.reshape(p.shape), alpha=-lr * muon_lr_scale(full_shape, hp["adjust_lr_fn"]))


def routes_to_matrix(p: Tensor, group: dict[str, Any]) -> bool:
    """Whether Muon orthogonalizes ``p`` in ``group`` (``use_muon`` True, or ``"auto"`` and a real matrix)."""
    use = group.get("use_muon", True)
    return (p.ndim >= 2 and not p.is_complex()) if use == "auto" else bool(use)


def muon_step(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
              overrides: Mapping[str, Any] | None = None) -> None:
    """Muon's matrix step for a bucket of DTensors (owner-rank Newton–Schulz, see the module docstring)."""
    states = [opt._state_of(p, group) for p in params]
    hp = opt.declaration.hyper(group)  # the keyword arguments of descent.functional.muon
    hp.update((k, v) for k, v in (overrides or {}).items() if v is not None)
    hp["lr"] = float(hp["lr"])
    hp.setdefault("ns_method", "standard")
    mu, nesterov = hp["momentum"], hp["nesterov"]
    updates: dict[int, Tensor] = {}
    for i, (p, g, s) in enumerate(zip(params, grads, states)):
        if p.numel() == 0:
            continue
        g, buf = local(g), local(s["momentum_buffer"])
        if hp["maximize"]:
            g = -g
        buf.lerp_(g, 1 - mu)
        updates[i] = g.lerp(buf, mu) if nesterov else buf
    sharded = [i for i in updates if is_sharded(params[i])]
    for i in updates:
        if i not in sharded:  # replicated: every rank has the whole matrix
            _apply(local(params[i]), params[i].shape, _ns(updates[i], local(params[i]), hp), hp)
    if sharded:
        _sharded(params, sharded, updates, hp)


def _sharded(params: list[Tensor], idx: list[int], updates: dict[int, Tensor], hp: dict[str, Any]) -> None:
    """Owner-rank Newton–Schulz of the sharded matrices ``idx``, pipelined in :func:`waves`: while one wave's
    rows travel to their owners, the owners orthogonalize the previous wave (and its results travel back)."""
    first = params[idx[0]]
    world, group = shard_count(first), shard_group(first)
    if _scheme == "gather":
        owners = {i: None for i in idx}
    else:
        owners = dict(zip(idx, assign_owners([ns_cost(params[i]) for i in idx], world)))
    def work(run: list[int], got: list[list[Tensor]]) -> Pending | None:
        results = _orthogonalize(params, run, owners, got, hp)
        if _scheme != "gather":
            return _from_owners(params, run, owners, results, hp, world, group)
        for i in run:
            p = params[i]
            _apply(local(p), p.shape, results[i].narrow(shard_dim(p), *local_range(p)), hp)
        return None

    pipeline([[idx[k] for k in run] for run in waves([params[i].numel() for i in idx])],
             lambda run: _to_owners(params, run, owners, updates, world, group), work,
             lambda run, back: _apply_returned(params, run, owners, back, hp, world))


def _mine(params: list[Tensor], run: list[int], owners: dict[int, int | None]) -> list[int]:
    me = shard_rank(params[run[0]])
    return [i for i in run if owners[i] in (me, None)]


def _to_owners(params: list[Tensor], run: list[int], owners: dict[int, int | None], updates: dict[int, Tensor],
               world: int, group: Any) -> Pending:
    """Start the all-to-all that sends every rank's rows of the matrices of ``run`` to their owners."""
    send = [[updates[i] for i in run if owners[i] in (r, None)] for r in range(world)]
    recv = [[shard_shape(params[i], s).numel() for i in _mine(params, run, owners)] for s in range(world)]
    return start_exchange(send, recv, updates[run[0]].dtype, group)


def _orthogonalize(params: list[Tensor], run: list[int], owners: dict[int, int | None], got: list[list[Tensor]],
                   hp: dict[str, Any]) -> dict[int, Tensor]:
    """Newton–Schulz of the whole matrices this rank owns in ``run``, assembled from every rank's rows."""
    results: dict[int, Tensor] = {}
    for k, i in enumerate(_mine(params, run, owners)):
        p = params[i]
        pieces = [got[s][k].view(shard_shape(p, s)) for s in range(len(got))]
        full = torch.cat(pieces, dim=shard_dim(p))
        results[i] = _ns(full, local(p), hp).reshape(p.shape)
    return results


def _from_owners(params: list[Tensor], run: list[int], owners: dict[int, int | None], results: dict[int, Tensor],
                 hp: dict[str, Any], world: int, group: Any) -> Pending:
    """Start the all-to-all that returns each rank its rows of the orthogonalized matrices of ``run``."""
    ns_dtype = muon_ns_dtype(hp["ns_dtype"], local(params[run[0]]))
    mine = _mine(params, run, owners)
    send = [[results[i].narrow(shard_dim(params[i]), *local_range(params[i], r)) for i in mine]
            for r in range(world)]
    recv = [[local(params[i]).numel() for i in run if owners[i] == s] for s in range(world)]
    return start_exchange(send, recv, ns_dtype, group)


def _apply_returned(params: list[Tensor], run: list[int], owners: dict[int, int | None], back: list[list[Tensor]],
                    hp: dict[str, Any], world: int) -> None:
    cursor = [0] * world
    for i in run:
        s = owners[i]
        p = params[i]
        _apply(local(p), p.shape, back[s][cursor[s]].view(local(p).shape), hp)
        cursor[s] += 1
