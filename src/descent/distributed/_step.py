"""One optimizer bucket of DTensor parameters: elementwise on local shards, else the right collective.

:func:`step_bucket` is what :class:`descent.optim.Optimizer`'s bucket loop calls when a
bucket holds DTensors (FSDP2's ``fully_shard``). It picks how with :func:`mode_of`:

* ``"elementwise"``: the optimizer's own ``_update`` on ``to_local()`` tensors and the
  local shards of its state: kernels see dense local storage; the numbers are exactly the
  single-process ones.
* ``"lamb"``, ``"adafactor"``, ``"mars"``: the per-tensor statistics are local partial sums, reduced
  over the mesh with one ``all_reduce`` per bucket (two for Adafactor, and for MARS with
  ``cautious=True``) (:mod:`._stats`); on the Numba path one per wave of the bucket, started
  asynchronously so that they overlap the next wave's pass (:func:`._comm.run_stages`).
* ``"matrix"``: each whole matrix goes to one owner rank (balanced by Newton–Schulz cost),
  which orthogonalizes it; the update returns as shards (:mod:`._owner`), in waves whose
  all-to-alls overlap the Newton–Schulz work of the previous wave.
* ``"owner"``: Shampoo and SOAP: each whole matrix, and its preconditioners, live on
  one owner rank, which runs the one-process step on it; parameter and state rows go
  there and back by all-to-all (:mod:`._precond`).
* ``"gather"``: every rank gathers the full tensors and runs the one-process step
  (replicated work; the fallback for an optimizer with no declaration, and for a
  ``cautious=True`` group of an elementwise optimizer, whose mask is rescaled by a whole-tensor count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ._layout import check_bucket, is_dtensor, is_sharded, like_param, local, local_slice, sharded_like

__all__ = ["MODES", "MODE_BY_NAME", "mode_of", "step_bucket", "elementwise_step", "gather_step"]

MODES = ("elementwise", "lamb", "adafactor", "mars", "matrix", "owner", "gather")

#: How descent's optimizers (by registry name) step DTensor parameters; any other is stepped with "gather".
MODE_BY_NAME = {
    **dict.fromkeys(("sgd", "sgd-plain", "momentum", "adam", "adamw", "adagrad", "rmsprop", "lion", "sophiag",
                     "adopt", "ademamix", "schedulefree-sgd", "schedulefree-adamw"), "elementwise"),
    "lamb": "lamb", "adafactor": "adafactor", "muon": "matrix",
    **dict.fromkeys(("shampoo", "soap"), "owner"), "mars": "mars",  # Prodigy steps its local shards in its own step()
    **dict.fromkeys(("kfac", "lbfgs"), "unsupported"),
}

#: Why an optimizer refuses DTensor parameters.
UNSUPPORTED = {"kfac": "its layer hooks and eigenbases need whole weights; under DistributedDataParallel it "
                       "averages its factors over the ranks",
               "lbfgs": "its line search needs the whole model on every rank"}


def mode_of(opt: Any, group: dict[str, Any]) -> str:
    """How ``opt`` steps ``group`` when its parameters are DTensors (one of :data:`MODES` or ``"unsupported"``).

    A class attribute ``_distributed`` (a mode) wins; otherwise descent's optimizers are
    looked up by their registry name (:data:`MODE_BY_NAME`) and anything else is stepped
    with ``"gather"`` (always right, replicated work).
    """
    mode = getattr(type(opt), "_distributed", None)
    if mode is None:
        decl = getattr(type(opt), "declaration", None)
        name = decl.meta.name if decl is not None else type(opt).__name__.lower()
        mode = MODE_BY_NAME.get(name, "gather")
    if mode == "matrix" and group.get("use_muon", True) is False:
        mode = "elementwise"  # Muon's auxiliary AdamW groups
    if mode == "elementwise" and group.get("cautious", False):
        mode = "gather"  # the mask's rescale n / (sum(mask) + 1) counts the whole tensor, not a shard
    if mode not in MODES + ("unsupported",):
        raise ValueError(f"Invalid _distributed declaration of {type(opt).__name__}: {mode!r} (one of {MODES})")
    return mode


def step_bucket(opt: Any, backend: str | Callable[[torch.device, torch.dtype], str], group: dict[str, Any],
                params: list[Tensor], grads: list[Tensor], overrides: Mapping[str, Any] | None = None,
                where: list[str] | None = None) -> None:
    """Step one bucket whose parameters are DTensors.

    Args:
        opt: the descent optimizer (its ``_update``, ``_state_of``, ``_init_state`` are used).
        backend: the backend name, or a function of the local (device, dtype) choosing it.
        group: the param group. params, grads: the bucket (DTensors, one layout checked here).
        overrides: this step's hyperparameter overrides (as the base passes them to ``_update``).
        where: labels of the parameters for error messages.

    Raises:
        ValueError: a layout or an optimizer descent cannot step this way (the same on every
            rank, before any collective).
    """
    owner = type(opt).__name__
    check_bucket(params, owner, where)
    check_bucket(grads, owner + " (gradients)", where)
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.placements != g.placements:
            label = where[i] if where else f"parameter {i}"
            raise ValueError(f"{owner}: {label} has placements {p.placements} but its gradient {g.placements}")
    mode = mode_of(opt, group)
    if mode == "unsupported":
        decl = getattr(type(opt), "declaration", None)
        why = UNSUPPORTED.get(decl.meta.name if decl is not None else "", "it is not declared for DTensors")
        raise ValueError(f"{owner} does not support DTensor (FSDP2) parameters: {why}")
    lp = local(params[0])
    name = backend(lp.device, lp.dtype) if callable(backend) else backend
    if mode == "matrix":
        from ._owner import muon_step, routes_to_matrix

        rows = [i for i, p in enumerate(params) if routes_to_matrix(p, group)]
        rest = [i for i in range(len(params)) if i not in set(rows)]
        if rows:
            muon_step(opt, name, group, [params[i] for i in rows], [grads[i] for i in rows], overrides)
        if rest:
            elementwise_step(opt, name, group, [params[i] for i in rest], [grads[i] for i in rest], overrides)
    elif mode == "owner":
        _owner_split(opt, name, group, params, grads, overrides)
    elif mode == "elementwise":
        elementwise_step(opt, name, group, params, grads, overrides)
    elif mode == "gather":
        gather_step(opt, name, group, params, grads, overrides)
    elif mode == "lamb":
        from ._stats import lamb_step
        lamb_step(opt, group, params, grads, overrides, backend=name)
    elif mode == "mars":
        from ._stats import mars_step
        mars_step(opt, group, params, grads, overrides, backend=name)
    else:
        from ._stats import adafactor_step
        adafactor_step(opt, group, params, grads, overrides, backend=name)


def _owner_split(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                 overrides: Mapping[str, Any] | None) -> None:
    """Shampoo/SOAP: sharded matrices to their owners, sharded vectors elementwise, replicated tensors locally."""
    from ._layout import is_sharded
    from ._precond import owner_step, routes_to_owner

    kinds = ["owner" if routes_to_owner(p, group) else "elementwise" if is_sharded(p) else "gather" for p in params]
    for kind, run in (("owner", owner_step), ("elementwise", elementwise_step), ("gather", gather_step)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if idx:
            run(opt, backend, group, [params[i] for i in idx], [grads[i] for i in idx], overrides)


def _write_back(params: list[Tensor], states: list[dict[str, Any]], views: list[dict[str, Any]],
                before: list[dict[str, Any]]) -> None:
    """State values ``_update`` created or replaced go back into the state, shards wrapped as DTensors."""
    for p, s, v, b in zip(params, states, views, before):
        shape = local(p).shape
        for k, val in v.items():
            if k not in b or val is not b[k]:
                s[k] = like_param(val, p) if isinstance(val, Tensor) and val.shape == shape else val


def elementwise_step(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor],
                     grads: list[Tensor], overrides: Mapping[str, Any] | None = None) -> None:
    """The optimizer's own step on the local shards (exactly the one-process numbers); sharded
    parameters with low-bit state are stepped on the global tensor's blocks (:mod:`._lowbit`)."""
    from ._lowbit import lowbit_split

    params, grads = lowbit_split(opt, group, params, grads, overrides)
    if not params:
        return
    states = [opt._state_of(p, group) for p in params]
    views = [{k: local(v) for k, v in s.items()} for s in states]
    before = [dict(v) for v in views]
    opt._update(backend, group, [local(p) for p in params], [local(g) for g in grads], views, overrides)
    _write_back(params, states, views, before)


def _full(t: Any) -> Any:
    if not is_dtensor(t):
        return t
    if is_sharded(t):  # an all-gather: this rank's shard goes to every other rank
        from ._comm import traffic
        from ._layout import shard_count

        traffic["gather"] += (shard_count(t) - 1) * local(t).numel() * local(t).element_size()
        traffic["calls"] += 1
    return t.full_tensor()


def gather_step(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                overrides: Mapping[str, Any] | None = None) -> None:
    """Every rank gathers full tensors, runs the one-process step, and keeps its shard (replicated work).

    State shaped like the parameter stays sharded (a DTensor); other state (Shampoo's
    preconditioners) is a plain tensor, the same on every rank.
    """
    full_p = [_full(p) for p in params]
    states = []
    for p, fp in zip(params, full_p):
        s = opt.state[p]
        if not s:
            s.update({k: like_param(local_slice(v, p).clone(), p) if sharded_like(opt, k, v, p)
                      else v for k, v in opt._init_state(fp, group).items()})
        states.append(opt._state_of(p, group))
    views = [{k: _full(v) for k, v in s.items()} for s in states]
    before = [dict(v) for v in views]
    opt._update(backend, group, full_p, [_full(g) for g in grads], views, overrides)
    for p, fp, s, v, b in zip(params, full_p, states, views, before):
        local(p).copy_(local_slice(fp, p))
        for k, val in v.items():
            old = s.get(k)
            if is_dtensor(old) and k in b and val is b[k]:
                local(old).copy_(local_slice(val, old))
            elif is_dtensor(p) and sharded_like(opt, k, val, p):
                s[k] = like_param(local_slice(val, p).clone(), p)
            else:
                s[k] = val
