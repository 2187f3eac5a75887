"""The step loop every descent optimizer shares.

:class:`Optimizer` is a real ``torch.optim.Optimizer``. A subclass supplies its
constructor, ``_check_group(group)`` (validate one param group, ``ValueError``) and one
:class:`descent.optim._spec.Declaration` (class attribute ``declaration``): the per-tensor
functional, the mapping of a group to its keyword arguments, the state, the kernels per
backend and the metadata the registry reads.

The base does the rest, once for every optimizer: param groups and their validation,
lazy state with torch's key names (and the state of options switched on mid-run), step
counters, grouping by device and dtype, complex parameters (as real views, as torch
does), the closure, ``@torch.no_grad()``, the backend choice
(:func:`descent.optim._backend.select_backend`), "kernel for the tensors it can take,
functional for the rest" (:func:`descent.optim._run.run_declaration`, which also keeps a
``capturable=True`` group's step free of host syncs), and the optional NaN-safe step (``skip_nonfinite``). Matrix
optimizers that need more than one tensor at a time override :meth:`Optimizer._update`
(Shampoo, Muon) or transform the gradients first (:meth:`Optimizer._precondition`, K-FAC)
and still run through this loop.

Inside ``torch.compile`` (:func:`torch.compiler.is_compiling`) the step takes its compile
path: each bucket runs a backend dynamo traces (:func:`compile_backend`: foreach, else the
functional; never the Numba kernels nor torch's compiler-disabled fused kernels), and what
must not be traced (lazy state, launcher imports, step numbers as ints) happens in one
``torch.compiler.disable``d call at the start of the step (:func:`_prepare_compile`).
Hyperparameters stay Python floats in the groups: dynamo recompiles once when a schedule
first changes one and then treats it as a symbolic value, so the step compiles a small
constant number of graphs (2 to 4 measured, see the README) for a whole model, however
many parameters and steps.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import repeat
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..stability.nonfinite import find_nonfinite, param_label, record_skip
from ._backend import Support, floating, resolve_request, select_backend
from ._compile import _COMPILE_READY, _NEXT_STEP, _prepare_compile, _wants_step_ints, compile_backend
from ._run import advance_steps, run_declaration
from ._spec import Declaration
from ..distributed._layout import any_dtensor
from ..distributed._step import step_bucket

__all__ = ["Optimizer", "advance_steps", "run_declaration", "step_tensor", "param_label"]

Work = list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[int]]]

log = logging.getLogger("descent.optim")


def step_tensor(p: Tensor) -> Tensor:
    """A fresh step counter: a float32 scalar on the parameter's device (torch's fused layout)."""
    return torch.zeros((), dtype=torch.float32, device=p.device)


class Optimizer(torch.optim.Optimizer):
    """Base class of every descent optimizer (see the module docstring)."""

    #: The optimizer's declaration (see :mod:`descent.optim._spec`).
    declaration: ClassVar[Declaration | None] = None
    #: ``torch.compile(opt.step)`` compiles a few graphs (again when a hyperparameter first
    #: changes, never after) and traces the whole step; False where the docstring says why not.
    compile_friendly: ClassVar[bool] = True
    #: Keys of every group that the base adds on top of the subclass's defaults.
    _base_defaults: ClassVar[dict[str, Any]] = {
        "backend": None,
        "foreach": None,
        "fused": None,
        "maximize": False,
        "skip_nonfinite": False,
        "differentiable": False,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        decl = cls.__dict__.get("declaration")
        if decl is not None:
            from .registry import register

            register(cls)

    @property
    def _supported(self) -> Mapping[str, Support]:
        return self.declaration.supported() if self.declaration is not None else {"loop": floating}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        lr = defaults.get("lr")
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        for key, value in self._base_defaults.items():
            defaults.setdefault(key, value)
        if defaults["differentiable"] and defaults["fused"]:
            raise RuntimeError("`fused` does not support `differentiable` (as in torch: the functional runs under "
                               "autograd)")
        self.param_groups: list[dict[str, Any]] = []
        self._check_group({**defaults, "params": []})  # bad hyperparameters are named before params are read
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {torch.typename(params)}")
        params = list(params)
        if len(params) == 0:
            raise ValueError(f"Invalid params: {type(self).__name__} got an empty parameter list")
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
            _check_capturable(type(self).__name__, group)
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
    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The lazy state of one parameter (the declaration's, unless overridden)."""
        return self.declaration.init_state(p, group)

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

    def _states_of(self, params: list[Tensor], group: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
        """:meth:`_state_of` for a bucket of parameters on ``device``: when every state exists and
        every step counter is already a float32 tensor there (every step but the first), a few
        C-level passes instead of a Python call per parameter (90 -> 50 us on 196 tensors)."""
        if torch.compiler.is_compiling():
            return [self._state_of(p, group) for p in params]
        states = list(map(self.state.__getitem__, params))  # a defaultdict: {} for a new parameter
        if all(states):
            steps = [s.get("step") for s in states]
            if all(map(_IS_NONE, steps)):
                return states
            if (not any(map(_IS_NONE, steps)) and all(map(isinstance, steps, repeat(Tensor)))
                    and _FLOAT32.issuperset(map(_DTYPE, steps))
                    and (all(map(_IS_CPU, steps)) if device.type == "cpu" else {device}.issuperset(map(_DEVICE, steps)))):
                return states
        return [self._state_of(p, group) for p in params]

    # ------------------------------------------------------------------- step
    def _takes_grad_scale(self, group: dict[str, Any]) -> bool:  # noqa: ARG002 - overridden (low-bit states)
        """Whether a bucket of this group may run :func:`run_declaration` with GradScaler's scale
        (its kernels unscale inside; the functional gets unscaled copies) instead of :meth:`_update`."""
        return type(self)._update is Optimizer._update

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], overrides: Mapping[str, Any] | None = None) -> None:
        """Step one device/dtype bucket with the class's declaration."""
        run_declaration(self.declaration, backend, group, params, grads, states, overrides)

    def _collect(self) -> Work:
        work = []
        for gi, group in enumerate(self.param_groups):
            if not torch.compiler.is_compiling():  # every parameter has a dense gradient: C-level passes
                grads = list(map(_GRAD, group["params"]))
                if not any(map(_IS_NONE, grads)) and not any(map(_IS_SPARSE, grads)):
                    work.append((group, list(group["params"]), grads, list(range(len(grads)))))
                    continue
            params, grads, index = [], [], []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse and not self._sparse_ok(group):
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        f"{param_label(group, gi, i)} has one (use torch.optim.SparseAdam for it)"
                    )
                params.append(p)
                grads.append(p.grad)
                index.append(i)
            work.append((group, params, grads, index))
        return work

    def _sparse_ok(self, group: dict[str, Any]) -> bool:  # noqa: ARG002 - overridden by SGD/Adagrad
        return False

    def _skip_nonfinite(self, work: Work) -> bool:
        """With ``skip_nonfinite``: detect non-finite grads, record them, return True to skip."""
        checked = [gi for gi, w in enumerate(work) if w[0].get("skip_nonfinite") and w[2]]
        if not checked:
            return False
        where = find_nonfinite(self.param_groups, checked)
        if not where:
            return False
        record_skip([g for g in self.param_groups if g.get("skip_nonfinite")], {})
        for gi, labels in where.items():
            self.param_groups[gi]["nonfinite_params"] = labels
        log.warning("%s: skipped a step with non-finite gradients in %s", type(self).__name__,
                    ", ".join(w for ws in where.values() for w in ws))
        return True

    def _precondition(self, work: Work) -> Work:
        """Turn the gradients into the directions the update uses (identity; K-FAC overrides)."""
        return work

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step.

        Without ``differentiable=True`` the step runs under ``torch.no_grad()``; with it, as in
        torch, autograd records the update (the functional on every tensor, see
        :func:`descent.optim._backend.select_backend`).

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or ``None``.
        """
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return self._step(closure)

    def _step(self, closure: Callable[[], Any] | None, overrides: Mapping[str, Any] | None = None) -> Any:
        """The step, with per-step hyperparameter ``overrides`` handed to the declaration's mapping."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # GradScaler (when _step_supports_amp_scaling) leaves the gradients scaled and sets these
        scale, found = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if found is not None and bool(found):  # it found Inf/NaN: no update; it lowers the scale
            return loss
        work = self._collect()
        compiling = torch.compiler.is_compiling()
        if compiling and (not _COMPILE_READY or _wants_step_ints(self)
                          or any(not self.state.get(p) for w in work for p in w[1])):
            _prepare_compile(self, work)  # state, imports, step numbers: outside the graph
        if self._skip_nonfinite(work):
            return loss
        for group, params, grads, _ in self._precondition(work):
            if params:
                self._step_group(group, params, grads, overrides, scale)
        if compiling:
            for w in work:
                for p in w[1]:
                    self.state[p].pop(_NEXT_STEP, None)
        return loss

    @property
    def _step_supports_amp_scaling(self) -> bool:  # torch's GradScaler protocol
        return self.declaration is not None and self.declaration.amp

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    overrides: Mapping[str, Any] | None = None, grad_scale: Tensor | None = None) -> None:
        buckets = _buckets(params)
        requested = resolve_request(group.get("backend"), group.get("foreach"), group.get("fused"))
        if group.get("differentiable"):
            requested = "loop"  # autograd records the functional's ops (torch's differentiable=True)
        excluded = ("foreach",) if group.get("foreach") is False else ()
        for (device, dtype), idx in buckets.items():
            ps = [params[i] for i in idx]
            gs = [grads[i] for i in idx]
            sharded = not _PLAIN.issuperset(map(type, ps)) and any_dtensor(ps)
            # GradScaler's scale goes into the kernels that take it; every other path gets unscaled grads
            direct = (grad_scale is not None and self._takes_grad_scale(group) and not dtype.is_complex
                      and not sharded)
            if grad_scale is not None and not direct:
                gs = torch._foreach_div(gs, grad_scale.to(gs[0].device))
            if sharded:  # FSDP2: local shards, reductions over the mesh (descent.distributed)
                step_bucket(self, lambda dev, dt: select_backend(requested, self._supported, dev, dt,
                                                                 owner=type(self).__name__, excluded=excluded),
                            group, ps, gs, overrides)
                continue
            states = self._states_of(ps, group, device)
            if dtype.is_complex:
                self._step_complex(requested, excluded, group, ps, gs, states, overrides)
                continue
            if torch.compiler.is_compiling():
                backend = compile_backend(self.declaration, requested, device, dtype)
            else:
                backend = select_backend(requested, self._supported, device, dtype,
                                         owner=type(self).__name__, excluded=excluded)
            if direct:
                run_declaration(self.declaration, backend, group, ps, gs, states, overrides, grad_scale)
                continue
            self._update(backend, group, ps, gs, states, overrides)
            if self.declaration is not None and self.declaration.loop_returns and not torch.compiler.is_compiling():
                for p, s in zip(ps, states):  # lazy state not needed (SGD without momentum): none, as torch
                    if not s:
                        del self.state[p]

    def _step_complex(self, requested: str | None, excluded: tuple[str, ...], group: dict[str, Any],
                      params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
                      overrides: Mapping[str, Any] | None = None) -> None:
        """Complex parameters: every tensor is viewed as real (…, 2), as torch does."""
        real_p = [torch.view_as_real(p) for p in params]
        real_g = [torch.view_as_real(g) for g in grads]
        views = [{k: torch.view_as_real(v) if isinstance(v, Tensor) and v.is_complex() else v
                  for k, v in s.items()} for s in states]
        before = [dict(v) for v in views]
        if torch.compiler.is_compiling():
            backend = compile_backend(self.declaration, requested, params[0].device, real_p[0].dtype)
        else:
            backend = select_backend(requested, self._supported, params[0].device, real_p[0].dtype,
                                     owner=type(self).__name__, excluded=excluded)
        self._update(backend, group, real_p, real_g, views, overrides)
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


def _buckets(params: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Positions of ``params`` by (device, dtype), in order of first appearance."""
    if not torch.compiler.is_compiling():
        # the usual case: one bucket, two C-level passes (every CPU tensor has the one device "cpu")
        dtypes = set(map(_DTYPE, params))
        devices = {params[0].device} if params and all(map(_IS_CPU, params)) else set(map(_DEVICE, params))
        if len(devices) == 1 and len(dtypes) == 1:
            return {(devices.pop(), dtypes.pop()): list(range(len(params)))}
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return buckets


_IS_NONE = partial(operator.is_, None)
_GRAD, _IS_SPARSE = operator.attrgetter("grad"), operator.attrgetter("is_sparse")
_DEVICE, _DTYPE, _IS_CPU = operator.attrgetter("device"), operator.attrgetter("dtype"), operator.attrgetter("is_cpu")
_FLOAT32, _PLAIN = frozenset((torch.float32,)), frozenset((Tensor, torch.nn.Parameter))


def _check_capturable(owner: str, group: dict[str, Any]) -> None:
    """Raise for options a ``capturable=True`` group cannot keep free of host syncs."""
    if not group.get("capturable"):
        return
    for key, off in (("state_bits", 32), ("cautious", False), ("skip_nonfinite", False), ("differentiable", False)):
        if group.get(key, off) != off:
            raise ValueError(f"Invalid capturable=True with {key}={group[key]!r}: descent.{owner} cannot step that "
                             f"without reading the device from the host (use {key}={off!r})")


def reject_unsupported(owner: str, **flags: bool) -> None:
    """Raise for torch flags descent does not implement (``capturable``, ``differentiable``)."""
    for name, value in flags.items():
        if value:
            raise ValueError(f"Invalid {name}: True is not supported by descent.{owner} (use torch.optim.{owner})")
