"""The step loop every descent optimizer shares.

:class:`Optimizer` is a real ``torch.optim.Optimizer``. Subclasses supply four things:

* ``_supported``: backend name -> predicate over (device, dtype);
* ``_check_group(group)``: validate one param group's hyperparameters (``ValueError``);
* ``_init_state(p, group)``: the lazy state of one parameter, with torch's key names;
* ``_update(backend, group, params, grads, states)``: run one step for one
  device/dtype bucket on the chosen backend, calling :mod:`descent.functional`.

The base does the rest: param groups and their validation, lazy state, grouping by
device and dtype, complex parameters (as real views, as torch does), the closure,
``@torch.no_grad()``, the backend choice (:func:`descent.optim._backend.select_backend`)
and the optional NaN-safe step (``skip_nonfinite``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._backend import Support, floating, resolve_request, select_backend
from ..stability.nonfinite import nonfinite_indices

__all__ = ["Optimizer", "advance_steps", "step_tensor", "param_label"]

log = logging.getLogger("descent.optim")


def step_tensor(p: Tensor) -> Tensor:
    """A fresh step counter: a float32 scalar on the parameter's device (torch's fused layout)."""
    return torch.zeros((), dtype=torch.float32, device=p.device)


def advance_steps(steps: list[Tensor]) -> list[int]:
    """Add 1 to every step counter of a bucket (one multi-tensor op) and return the new values."""
    torch._foreach_add_(steps, 1.0)
    return [int(v) for v in torch.stack(steps).tolist()]


def param_label(group: Mapping[str, Any], group_index: int, index: int) -> str:
    """Human-readable position of a parameter, with its name when the group has names."""
    where = f"param_groups[{group_index}]['params'][{index}]"
    names = group.get("param_names")
    if names is not None and index < len(names):
        return f"{where} ({names[index]!r})"
    return where


class Optimizer(torch.optim.Optimizer):
    """Base class of every descent optimizer (see the module docstring)."""

    _supported: ClassVar[Mapping[str, Support]] = {"loop": floating}
    #: Keys of every group that the base adds on top of the subclass's defaults.
    _base_defaults: ClassVar[dict[str, Any]] = {
        "backend": None,
        "foreach": None,
        "fused": None,
        "maximize": False,
        "skip_nonfinite": False,
        "differentiable": False,  # torch's key; descent steps are never differentiable
    }

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            params = [params]
        params = list(params)
        if len(params) == 0:
            raise ValueError(f"Invalid params: {type(self).__name__} got an empty parameter list")
        for key, value in self._base_defaults.items():
            defaults.setdefault(key, value)
        resolve_request(defaults["backend"], defaults["foreach"], defaults["fused"])
        super().__init__(params, defaults)

    # ----------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does, then validate its hyperparameters and its params."""
        if isinstance(param_group, dict) and not isinstance(param_group.get("params"), (Tensor, set)):
            param_group["params"] = list(param_group["params"])
            seen: set[int] = set()
            for i, p in enumerate(param_group["params"]):
                key = id(p[1]) if isinstance(p, tuple) else id(p)
                if key in seen:
                    raise ValueError(
                        f"Invalid params: parameter {i} of group {len(self.param_groups)} appears twice in the group"
                    )
                seen.add(key)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            resolve_request(group.get("backend"), group.get("foreach"), group.get("fused"))
            self._check_group(group)
        except ValueError:
            self.param_groups.pop()
            raise
        group.setdefault("skipped_steps", 0)

    def _check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        """Validate one group's hyperparameters; raise ``ValueError`` naming the bad one."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.setdefault("skipped_steps", 0)

    # ------------------------------------------------------------------ state
    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _state_of(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state.update(self._init_state(p, group))
        else:
            step = state.get("step")
            if step is not None and (
                not isinstance(step, Tensor) or step.dtype != torch.float32 or step.device != p.device
            ):
                # A state_dict from torch's for-loop path (or an older release) keeps
                # the step elsewhere; every descent backend reads it from here.
                state["step"] = torch.as_tensor(float(step), dtype=torch.float32).to(p.device)
        return state

    # ------------------------------------------------------------------- step
    def _update(
        self,
        backend: str,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _collect(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[int]]]:
        work = []
        for gi, group in enumerate(self.param_groups):
            params, grads, index = [], [], []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        f"{param_label(group, gi, i)} has one (use torch.optim.SparseAdam for it)"
                    )
                params.append(p)
                grads.append(p.grad)
                index.append(i)
            work.append((group, params, grads, index))
        return work

    def _skip_nonfinite(self, work: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[int]]]) -> bool:
        """With ``skip_nonfinite``: detect non-finite grads, record them, return True to skip."""
        checked = [(gi, w) for gi, w in enumerate(work) if w[0].get("skip_nonfinite") and w[2]]
        if not checked:
            return False
        bad: list[tuple[int, list[str]]] = []
        for gi, (group, _params, grads, index) in checked:
            nonfinite = nonfinite_indices(grads)
            if nonfinite:
                bad.append((gi, [param_label(group, gi, index[k]) for k in nonfinite]))
        if not bad:
            return False
        for group, *_ in work:
            if group.get("skip_nonfinite"):
                group["skipped_steps"] = int(group.get("skipped_steps", 0)) + 1
                group["nonfinite_params"] = []
        for gi, where in bad:
            self.param_groups[gi]["nonfinite_params"] = where
        log.warning("%s: skipped a step with non-finite gradients in %s", type(self).__name__,
                    ", ".join(w for _, ws in bad for w in ws))
        return True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        if self._skip_nonfinite(work):
            return loss
        for group, params, grads, _ in work:
            if params:
                self._step_group(group, params, grads)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype), []).append(i)
        requested = resolve_request(group.get("backend"), group.get("foreach"), group.get("fused"))
        excluded = ("foreach",) if group.get("foreach") is False else ()
        for (device, dtype), idx in buckets.items():
            ps = [params[i] for i in idx]
            gs = [grads[i] for i in idx]
            states = [self._state_of(p, group) for p in ps]
            if dtype.is_complex:
                self._step_complex(requested, excluded, group, ps, gs, states)
                continue
            backend = select_backend(requested, self._supported, device, dtype,
                                     owner=type(self).__name__, excluded=excluded)
            self._update(backend, group, ps, gs, states)

    def _step_complex(self, requested: str | None, excluded: tuple[str, ...], group: dict[str, Any],
                      params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]) -> None:
        """Complex parameters: every tensor is viewed as real (…, 2), as torch does."""
        real_p = [torch.view_as_real(p) for p in params]
        real_g = [torch.view_as_real(g) for g in grads]
        views = [{k: torch.view_as_real(v) if isinstance(v, Tensor) and v.is_complex() else v
                  for k, v in s.items()} for s in states]
        before = [dict(v) for v in views]
        backend = select_backend(requested, self._supported, params[0].device, real_p[0].dtype,
                                 owner=type(self).__name__, excluded=excluded)
        self._update(backend, group, real_p, real_g, views)
        for p, s, v, b in zip(params, states, views, before):
            for k, val in v.items():
                if k not in b or val is not b[k]:
                    complex_like = isinstance(val, Tensor) and val.shape == torch.view_as_real(p).shape
                    s[k] = torch.view_as_complex(val) if complex_like else val

    # ---------------------------------------------------------------- helpers
    def backends(self) -> dict[tuple[int, str, str], str]:
        """Which backend each (group, device, dtype) bucket runs, as the next step would choose.

        Example:
            >>> import descent, torch
            >>> opt = descent.AdamW([torch.nn.Parameter(torch.zeros(3))])
            >>> opt.backends()
            {(0, 'cpu', 'torch.float32'): 'fused'}
        """
        out = {}
        for gi, group in enumerate(self.param_groups):
            requested = resolve_request(group.get("backend"), group.get("foreach"), group.get("fused"))
            excluded = ("foreach",) if group.get("foreach") is False else ()
            for p in group["params"]:
                dtype = torch.view_as_real(p).dtype if p.is_complex() else p.dtype
                key = (gi, str(p.device), str(dtype))
                if key not in out:
                    out[key] = select_backend(requested, self._supported, p.device, dtype,
                                              owner=type(self).__name__, excluded=excluded)
        return out

    def nonfinite_state(self) -> list[str]:
        """Positions of parameters whose optimizer state holds NaN or Inf (empty when healthy).

        This makes a corrupted state observable at any time, with or without
        ``skip_nonfinite``.
        """
        found = []
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                for value in self.state.get(p, {}).values():
                    if isinstance(value, Tensor) and value.numel() and (value.is_floating_point() or value.is_complex()):
                        if not bool(torch.isfinite(value).all()):
                            found.append(param_label(group, gi, i))
                            break
        return found


def reject_unsupported(owner: str, **flags: bool) -> None:
    """Raise for torch flags descent does not implement (``capturable``, ``differentiable``)."""
    for name, value in flags.items():
        if value:
            raise ValueError(f"Invalid {name}: True is not supported by descent.{owner} (use torch.optim.{owner})")
