"""One optimizer bucket of DTensor parameters: elementwise on local shards, else the right collective.

:func:`step_bucket` is what :class:`descent.optim.Optimizer`'s bucket loop calls when a
bucket holds DTensors (FSDP2's ``fully_shard``). It picks how by the optimizer's
``_distributed`` declaration (see :func:`mode_of`):

* ``"elementwise"``: the optimizer's own ``_update`` on ``to_local()`` tensors and the
  local shards of its state: kernels see dense local storage; the numbers are exactly the
  single-process ones.
* ``"lamb"``, ``"adafactor"``: the per-tensor statistics are local partial sums, reduced
  over the mesh with one ``all_reduce`` per bucket (two for Adafactor) (:mod:`._stats`).
* ``"matrix"``: each whole matrix goes to one owner rank (balanced by Newton–Schulz cost),
  which orthogonalizes it; the update returns as shards (:mod:`._owner`).
* ``"gather"``: every rank gathers the full tensors and runs the one-process step
  (replicated work; the fallback for Shampoo and for an optimizer with no declaration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._layout import check_bucket, is_dtensor, like_param, local, local_slice

__all__ = ["MODES", "mode_of", "step_bucket", "elementwise_step", "gather_step"]

MODES = ("elementwise", "lamb", "adafactor", "matrix", "gather")

#: Declarations for descent's optimizers that do not carry a ``_distributed`` attribute.
_BY_NAME = {"SGD": "elementwise", "Adam": "elementwise", "AdamW": "elementwise", "Adagrad": "elementwise",
            "RMSprop": "elementwise", "Lion": "elementwise", "SophiaG": "elementwise", "LAMB": "lamb",
            "Adafactor": "adafactor", "Muon": "matrix", "Shampoo": "gather"}


def mode_of(opt: Any, group: dict[str, Any]) -> str:
    """How ``opt`` steps ``group`` when its parameters are DTensors.

    An optimizer class may declare ``_distributed`` (one of :data:`MODES`, or a callable of
    the group returning one); otherwise descent's own classes are looked up by name and
    anything else is stepped with ``"gather"`` (always right, replicated work).
    """
    declared = getattr(type(opt), "_distributed", None)
    if declared is None:
        for cls in type(opt).__mro__:
            if cls.__name__ in _BY_NAME and cls.__module__.startswith("descent."):
                declared = _BY_NAME[cls.__name__]
                break
    if callable(declared):
        declared = declared(group)
    mode = declared or "gather"
    if mode == "matrix" and not group.get("use_muon", True):
        mode = "elementwise"  # Muon's auxiliary AdamW groups
    if mode not in MODES:
        raise ValueError(f"Invalid _distributed declaration of {type(opt).__name__}: {mode!r} (one of {MODES})")
    return mode


def step_bucket(opt: Any, backend: str | Callable[[torch.device, torch.dtype], str], group: dict[str, Any],
                params: list[Tensor], grads: list[Tensor], where: list[str] | None = None) -> None:
    """Step one bucket whose parameters are DTensors.

    Args:
        opt: the descent optimizer (its ``_update``, ``_state_of``, ``_init_state`` are used).
        backend: the backend name, or a function of the local (device, dtype) choosing it.
        group: the param group. params, grads: the bucket (DTensors, one layout checked here).
        where: labels of the parameters for error messages.

    Raises:
        ValueError: a layout descent cannot step (the same on every rank, before any collective).
    """
    check_bucket(params, type(opt).__name__, where)
    check_bucket(grads, type(opt).__name__ + " (gradients)", where)
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.placements != g.placements:
            label = where[i] if where else f"parameter {i}"
            raise ValueError(f"{type(opt).__name__}: {label} has placements {p.placements} but its gradient "
                             f"{g.placements}")
    mode = mode_of(opt, group)
    lp = local(params[0])
    name = backend(lp.device, lp.dtype) if callable(backend) else backend
    if mode == "elementwise":
        elementwise_step(opt, name, group, params, grads)
    elif mode == "gather":
        gather_step(opt, name, group, params, grads)
    elif mode == "lamb":
        from ._stats import lamb_step
        lamb_step(opt, group, params, grads)
    elif mode == "adafactor":
        from ._stats import adafactor_step
        adafactor_step(opt, group, params, grads)
    else:
        from ._owner import muon_step
        muon_step(opt, name, group, params, grads)


def _write_back(params: list[Tensor], states: list[dict[str, Any]], views: list[dict[str, Any]],
                before: list[dict[str, Any]]) -> None:
    """State values ``_update`` created or replaced go back into the state, shards wrapped as DTensors."""
    for p, s, v, b in zip(params, states, views, before):
        shape = local(p).shape
        for k, val in v.items():
            if k not in b or val is not b[k]:
                s[k] = like_param(val, p) if isinstance(val, Tensor) and val.shape == shape else val


def elementwise_step(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor],
                     grads: list[Tensor]) -> None:
    """The optimizer's own step on the local shards (exactly the one-process numbers)."""
    states = [opt._state_of(p, group) for p in params]
    views = [{k: local(v) for k, v in s.items()} for s in states]
    before = [dict(v) for v in views]
    opt._update(backend, group, [local(p) for p in params], [local(g) for g in grads], views)
    _write_back(params, states, views, before)


def _full(t: Any) -> Any:
    return t.full_tensor() if is_dtensor(t) else t


def gather_step(opt: Any, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
    """Every rank gathers full tensors, runs the one-process step, and keeps its shard (replicated work).

    State shaped like the parameter stays sharded (a DTensor); other state (Shampoo's
    preconditioners) is a plain tensor, the same on every rank.
    """
    full_p = [_full(p) for p in params]
    states = []
    for p, fp in zip(params, full_p):
        s = opt.state[p]
        if not s:
            s.update({k: like_param(local_slice(v, p).clone(), p) if isinstance(v, Tensor) and v.shape == p.shape
                      else v for k, v in opt._init_state(fp, group).items()})
        states.append(opt._state_of(p, group))
    views = [{k: _full(v) for k, v in s.items()} for s in states]
    before = [dict(v) for v in views]
    opt._update(backend, group, full_p, [_full(g) for g in grads], views)
    for p, fp, s, v, b in zip(params, full_p, states, views, before):
        local(p).copy_(local_slice(fp, p))
        for k, val in v.items():
            old = s.get(k)
            if is_dtensor(old) and k in b and val is b[k]:
                local(old).copy_(local_slice(val, old))
            elif isinstance(val, Tensor) and val.shape == p.shape and is_dtensor(p):
                s[k] = like_param(local_slice(val, p).clone(), p)
            else:
                s[k] = val
