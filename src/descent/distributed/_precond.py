"""Shampoo and SOAP on sharded parameters: each whole matrix and its preconditioners live on one owner rank.

Owners are assigned once per param group, largest first to the least-loaded rank by the
preconditioner's cost (:func:`precond_cost`, :func:`descent.distributed.assign_owners`),
so they do not change from step to step. Per step, one all-to-all sends each matrix's
shards (the parameter, its gradient and its state shaped like the parameter, e.g.
``exp_avg``/``exp_avg_sq``) to its owner; the owner runs the optimizer's own one-process
``_update`` on the whole tensors (with the preconditioners only it holds); a second
all-to-all returns each rank its rows of the new parameter and state. The result is the
one-process step bit for bit (the same ``_update`` on the same whole tensors). A bucket goes in
waves (:func:`descent.distributed._comm.waves`, asynchronous all-to-alls): the next wave's rows
travel to their owners, and the previous wave's results back, while the owners run ``_update``.

State, and checkpoints: state shaped like the parameter stays a DTensor with the
parameter's layout (``torch.distributed.checkpoint`` reshards it); the preconditioners
(Shampoo's ``preconditioner_k``/``inv_root_k``, SOAP's ``gg_*``/``q_*``: ``gg_left``/``gg_right`` of a
matrix, ``gg_k`` per dimension of a conv kernel or a ``merge_dims``/``precondition_1d`` tensor) are plain tensors
on the owner only, absent from the other ranks' state; the step counter is on every rank.
A DCP checkpoint then holds each preconditioner once (written by its owner) and a load on
any number of ranks fills them on the new owners (``tests/test_distributed.py``). The
state is initialized from a zero tensor of the parameter's shape, so an optimizer run this
way must not initialize its state from the parameter's values (Shampoo and SOAP do not).

Bytes sent per step, summed over ranks: ``(3 + 2k)(N-1)/N`` times the matrices' bytes with
``k`` state tensors shaped like the parameter (there: parameter, gradient and state; back:
parameter and state; k = 2 for Shampoo with Adam grafting and for SOAP), against
``(2 + k)(N-1)`` when every rank gathers every matrix (``benchmarks/distributed_step.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._comm import Pending, assign_owners, pipeline, start_exchange, waves
from ._layout import is_dtensor, is_sharded, like_param, local, local_range, local_slice, shard_count, \
    shard_dim, shard_group, shard_rank, shard_shape, sharded_like

__all__ = ["SCHEMES", "owner_step", "precond_cost", "routes_to_owner"]

#: "owner": one rank per matrix (default); "gather": every rank steps every matrix (for comparison).
SCHEMES = ("owner", "gather")
_scheme = "owner"


def precond_cost(p: Tensor) -> float:
    """Preconditioner work of a parameter, up to a constant: ``numel * sum(d) + sum(d^3)`` over its dims > 1."""
    dims = [d for d in p.shape if d > 1]
    return float(p.numel() * sum(dims) + sum(d ** 3 for d in dims))


def routes_to_owner(p: Tensor, group: dict[str, Any]) -> bool:
    """Whether ``p`` needs its whole tensor: sharded, and a matrix or in a cautious group (whose mask is global)
    or a SOAP ``precondition_1d`` group (whose vectors have a basis)."""
    whole = p.ndim >= 2 or bool(group.get("cautious", False)) or bool(group.get("precondition_1d", False))
    return is_sharded(p) and whole


def _owners(group: dict[str, Any], first: Tensor) -> dict[int, int]:
    """Owner rank of every parameter of ``group`` that goes to an owner on ``first``'s mesh (stable across steps)."""
    mesh = first.device_mesh
    ps = [q for q in group["params"] if is_dtensor(q) and q.device_mesh == mesh and routes_to_owner(q, group)]
    return dict(zip((id(q) for q in ps), assign_owners([precond_cost(q) for q in ps], shard_count(first))))


def _state(opt: Any, p: Tensor, group: dict[str, Any], owned: bool) -> dict[str, Any]:
    """``p``'s state: shaped-like-``p`` entries sharded, matrices (preconditioners) only when ``owned``."""
    s = opt.state[p]
    if not s:
        full = torch.zeros(p.shape, dtype=p.dtype, device=local(p).device)
        for k, v in opt._init_state(full, group).items():
            if sharded_like(opt, k, v, p):
                s[k] = like_param(local_slice(v, p).clone(), p)
            elif owned or not isinstance(v, Tensor) or v.ndim == 0:
                s[k] = v
    return opt._state_of(p, group)


def owner_step(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
               overrides: Mapping[str, Any] | None = None) -> None:
    """One bucket of sharded tensors (all routed by :func:`routes_to_owner`): see the module docstring."""
    first = params[0]
    me, pg = shard_rank(first), shard_group(first)
    if _scheme == "gather":
        from ._step import gather_step
        return gather_step(opt, backend, group, params, grads, overrides)
    table = _owners(group, first)
    owners = [table[id(p)] for p in params]
    states = [_state(opt, p, group, o == me) for p, o in zip(params, owners)]
    keys = [sorted(k for k, v in s.items() if is_dtensor(v)) for s in states]
    dtype = local(first).dtype
    if any(local(s[k]).dtype != dtype for s, ks in zip(states, keys) for k in ks):
        from ._step import gather_step  # one dtype per all-to-all: state in another dtype is gathered instead
        return gather_step(opt, backend, group, params, grads, overrides)
    parts = [[local(p), local(g)] + [local(s[k]) for k in ks] for p, g, s, ks in zip(params, grads, states, keys)]

    def work(run: list[int], got: list[list[Tensor]]) -> Pending:
        mine, full_p, views = _owner_update(opt, backend, group, overrides, params, states, keys, owners, run,
                                            parts, got)
        return _return_rows(params, keys, owners, run, mine, full_p, views, dtype, pg)

    # each wave's all-to-all overlaps the previous wave's _update
    pipeline(waves([p.numel() for p in params]), lambda run: _to_owners(params, parts, owners, run, dtype, pg), work,
             lambda run, back: _write_rows(params, states, keys, owners, run, back))


def _to_owners(params: list[Tensor], parts: list[list[Tensor]], owners: list[int], run: list[int],
               dtype: torch.dtype, pg: Any) -> Pending:
    """Start the all-to-all that sends every rank's rows of the tensors of ``run`` (and their state) to their owners."""
    world, me = shard_count(params[0]), shard_rank(params[0])
    mine = [i for i in run if owners[i] == me]
    return start_exchange([[t for i in run if owners[i] == r for t in parts[i]] for r in range(world)],
                          [[shard_shape(params[i], src).numel() for i in mine for _ in parts[i]]
                           for src in range(world)], dtype, pg)


def _owner_update(opt: Any, backend: str, group: dict[str, Any], overrides: Mapping[str, Any] | None,
                  params: list[Tensor], states: list[dict[str, Any]], keys: list[list[str]], owners: list[int],
                  run: list[int], parts: list[list[Tensor]], got: list[list[Tensor]]) -> tuple[list[int], list, list]:
    """The owner's one-process ``_update`` on the whole tensors of ``run`` it owns, assembled from ``got``."""
    world, me = shard_count(params[0]), shard_rank(params[0])
    mine = [i for i in run if owners[i] == me]
    cursor = [0] * world
    full_p, full_g, views = [], [], []
    for i in mine:
        p, dim = params[i], shard_dim(params[i])
        fulls = []
        for _ in parts[i]:
            fulls.append(torch.cat([got[s][cursor[s]].view(shard_shape(p, s)) for s in range(world)], dim=dim))
            cursor = [c + 1 for c in cursor]
        full_p.append(fulls[0])
        full_g.append(fulls[1])
        view = {k: v for k, v in states[i].items() if not is_dtensor(v)}
        view.update(zip(keys[i], fulls[2:]))
        views.append(view)
    if mine:
        opt._update(backend, group, full_p, full_g, views, overrides)
    for i, view in zip(mine, views):  # the owner's own state: preconditioners, step
        states[i].update((k, v) for k, v in view.items() if k not in keys[i])
    for i in run:
        if owners[i] != me and isinstance(states[i].get("step"), Tensor):
            states[i]["step"] += 1  # Shampoo and SOAP count one step per update (the owner's count)
    return mine, full_p, views


def _return_rows(params: list[Tensor], keys: list[list[str]], owners: list[int], run: list[int], mine: list[int],
                 full_p: list[Tensor], views: list[dict[str, Any]], dtype: torch.dtype, pg: Any) -> Pending:
    """Start the second all-to-all: each rank's rows of the new parameters and state of ``run`` from their owners."""
    world = shard_count(params[0])
    send = [[t.narrow(shard_dim(params[i]), *local_range(params[i], r))
             for i, fp, v in zip(mine, full_p, views) for t in [fp] + [v[k] for k in keys[i]]]
            for r in range(world)]
    recv = [[local(params[i]).numel() for i in run if owners[i] == s for _ in range(1 + len(keys[i]))]
            for s in range(world)]
    return start_exchange(send, recv, dtype, pg)


def _write_rows(params: list[Tensor], states: list[dict[str, Any]], keys: list[list[str]], owners: list[int],
                run: list[int], back: list[list[Tensor]]) -> None:
    """Copy the returned rows of ``run`` into the local parameters and state."""
    cursor = [0] * len(back)
    for i in run:
        s = owners[i]
        for dst in [local(params[i])] + [local(states[i][k]) for k in keys[i]]:
            dst.copy_(back[s][cursor[s]].view(dst.shape))
            cursor[s] += 1
