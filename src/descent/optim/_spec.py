"""How an optimizer declares itself: its math, its state, its kernels and its metadata.

A descent optimizer is one :class:`Declaration` (the class attribute ``declaration``)
plus its constructor and the validation of its hyperparameters. The shared base
(:mod:`descent.optim._base`) reads the declaration to create lazy state (including the
keys of options switched on mid-run), to advance step counters, to choose a backend
per device/dtype bucket, to hand the tensors a kernel can take to that kernel's
launcher and to run the per-tensor functional on the rest. The registry
(:mod:`descent.optim.registry`) reads the metadata.

A kernel binding names its launcher by dotted path (imported on first use, so Numba
or Triton load only when a bucket needs them). The launcher is called with keyword
arguments only::

    launcher(params, grads, <one list per state column, named by its state key>,
             steps=<list[int]> or <list[Tensor]>, [capturable=<bool>], **hyperparameters)

where the hyperparameters are exactly the keyword arguments the declaration's
functional receives (``capturable`` only for a ``Kernel(capturable=True)``). :meth:`Kernel.check` compares the launcher's signature with the
declaration when the binding is first used, so a renamed column or hyperparameter
fails loudly instead of passing the wrong float.

Example:
    >>> import descent
    >>> d = descent.Lion.declaration
    >>> d.columns, d.meta.name, d.meta.state_bytes
    (('exp_avg',), 'lion', 4.0)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._backend import Support, floating

__all__ = ["Kernel", "Meta", "Declaration", "zeros", "cautious_flag", "scalar", "TASK_KINDS"]

#: Kinds of task a default learning rate is declared for.
TASK_KINDS = ("classification", "language", "convex", "function")


#: Launchers already imported, by their ``"module:function"`` path.
_RESOLVED: dict[str, Callable[..., None]] = {}


def zeros(p: Tensor, group: Mapping[str, Any]) -> Tensor:  # noqa: ARG001 - state factory signature
    """A state tensor of zeros shaped and laid out like ``p``."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def scalar(group: Mapping[str, Any], value: Any) -> Any:
    """A hyperparameter as the functional and the kernels take it: ``float(value)``, except a
    tensor in a ``capturable`` group, which stays a device tensor (reading it would sync the host)."""
    if isinstance(value, Tensor) and group.get("capturable"):
        return value
    return float(value)


def cautious_flag(group: Mapping[str, Any]) -> dict[str, bool]:
    """``{"cautious": True}`` for a group with cautious masking on, else nothing: the functional's
    ``cautious`` argument, passed only when set (no kernel takes it; such a group runs the functional)."""
    return {"cautious": True} if group.get("cautious") else {}


@dataclass(frozen=True)
class Kernel:
    """One backend binding of an optimizer.

    Attributes:
        launcher: ``"module:function"`` of the launcher (see the module docstring).
        supports: predicate over (device, dtype) saying which buckets it can run.
        steps: what the launcher receives as ``steps``: ``"int"`` (the counters after the
            base advanced them), ``"tensor"`` (torch's kernels: the step tensors, which the
            launcher advances itself) or ``None`` (no ``steps`` argument).
        dense_only: hand it only tensors that are dense, contiguous and non-empty
            (:func:`descent.kernels.kernel_ok`); the rest run the functional.
        amp: the launcher takes ``grad_scale`` and ``found_inf`` (``GradScaler``'s protocol:
            it unscales the gradients inside the kernel instead of in a separate pass).
        capturable: the launcher takes ``capturable``; with ``capturable=True`` it receives the
            step counters as device tensors (already advanced, whatever ``steps`` says) and
            hyperparameters that may be 0-d device tensors, and makes no host sync, so a step
            can be captured in a CUDA graph. A capturable group runs such a kernel where one
            is bound to its backend.
    """

    launcher: str
    supports: Support
    steps: str | None = "int"
    dense_only: bool = True
    amp: bool = False
    capturable: bool = False

    def resolve(self) -> Callable[..., None]:
        fn = _RESOLVED.get(self.launcher)  # a plain dict read: torch.compile traces it without a break
        if fn is None:
            module, _, name = self.launcher.partition(":")
            fn = _RESOLVED[self.launcher] = getattr(importlib.import_module(module), name)
        return fn

    def check(self, declaration: Declaration, hyper: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` if the launcher's keywords differ from the declaration's."""
        params = inspect.signature(self.resolve()).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        expected = {"params", "grads", *declaration.columns, *hyper}
        if self.steps is not None:
            expected.add("steps")
        if self.amp:
            expected |= {"grad_scale", "found_inf"}
        if self.capturable:
            expected.add("capturable")
        got = set(params)
        if got != expected:
            raise TypeError(f"kernel {self.launcher}: arguments {sorted(got)} do not match the declaration's "
                            f"{sorted(expected)} (missing {sorted(expected - got)}, extra {sorted(got - expected)})")


@dataclass(frozen=True)
class Meta:
    """What the registry, the tasks, the audit and the benchmark know about an optimizer.

    Attributes:
        name: registry key (lower case), e.g. ``"adamw"``.
        adaptive: per-coordinate or per-layer adaptive step (sqrt batch-size scaling, warmup advice).
        state_bytes: optimizer-state bytes per float32 parameter.
        paper: the reference the math follows.
        lr: default learning rate per kind of task (:data:`TASK_KINDS`).
        kind: ``"elementwise"``, ``"matrix"`` or ``"quasi-newton"``.
        takes_model: the constructor takes the model itself (K-FAC, Muon's routing).
        weight_decay: the decay :func:`descent.create_optimizer` uses when none is given
            (None: the constructor's default).
    """

    name: str
    adaptive: bool
    state_bytes: float
    paper: str
    lr: Mapping[str, float] = field(default_factory=dict)
    kind: str = "elementwise"
    takes_model: bool = False
    weight_decay: float | None = None


@dataclass(frozen=True)
class Declaration:
    """Everything the shared loop needs to step one optimizer.

    Attributes:
        functional: the per-tensor update ``f(param, grad, *columns, [step=], **hyper)``.
        hyper: maps a param group (and this step's overrides) to the functional's keyword
            arguments, computed once per bucket.
        columns: state keys passed to the functional after ``(param, grad)``, in order
            (``None`` is passed for a key the state does not hold).
        state: state key -> factory ``(param, group) -> value`` for the lazy state; keys in
            ``optional`` are created only while their predicate holds, also mid-run.
        optional: state key -> predicate over the group.
        steps: keep a float32 ``"step"`` counter (torch's layout).
        step_arg: pass the counter to the functional as ``step=`` (int).
        kernels: backend name -> :class:`Kernel`, or a tuple of them tried in order (e.g. the
            Numba kernel on CPU, then the Triton kernel on CUDA); ``"loop"`` (the
            functional) is implicit.
        meta: :class:`Meta`.
        loop_returns: the functional returns the new value of this state key (SGD's
            ``momentum_buffer``, created lazily as torch does).
    """

    functional: Callable[..., Any]
    hyper: Callable[[Mapping[str, Any]], dict[str, Any]]
    columns: tuple[str, ...]
    meta: Meta
    state: Mapping[str, Callable[[Tensor, Mapping[str, Any]], Any]] = field(default_factory=dict)
    optional: Mapping[str, Callable[[Mapping[str, Any]], bool]] = field(default_factory=dict)
    steps: bool = False
    step_arg: bool = True
    kernels: Mapping[str, Kernel | tuple[Kernel, ...]] = field(default_factory=dict)
    loop_returns: str | None = None

    @property
    def amp(self) -> bool:
        """Some kernel of this optimizer unscales gradients itself (``GradScaler``'s protocol)."""
        return any(k.amp for b in self.kernels.values() for k in ((b,) if isinstance(b, Kernel) else b))

    def supported(self) -> dict[str, Support]:
        """Backend name -> predicate, the loop always included."""
        out: dict[str, Support] = {"loop": floating}
        for name in self.kernels:
            out[name] = lambda device, dtype, _n=name: self.kernel_for(_n, device, dtype) is not None
        return out

    def kernel_for(self, backend: str, device: torch.device, dtype: torch.dtype,
                   capturable: bool = False) -> Kernel | None:
        """The first kernel bound to ``backend`` that runs this device and dtype (None: the functional);
        with ``capturable``, the first capturable one if there is one."""
        bound = self.kernels.get(backend)
        kernels = [k for k in ((bound,) if isinstance(bound, Kernel) else (bound or ())) if k.supports(device, dtype)]
        if capturable:
            kernels.sort(key=lambda k: not k.capturable)  # stable: the declared order otherwise
        return kernels[0] if kernels else None

    def init_state(self, p: Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        """The lazy state of one parameter for this group's options."""
        out: dict[str, Any] = {"step": torch.zeros((), dtype=torch.float32, device=p.device)} if self.steps else {}
        for key, make in self.state.items():
            cond = self.optional.get(key)
            if cond is None or cond(group):
                out[key] = make(p, group)
        return out

    def ensure_optional(self, group: Mapping[str, Any], params: list[Tensor], states: list[dict[str, Any]]) -> None:
        """Create the state of options switched on after the state was made (amsgrad, momentum...)."""
        for key, cond in self.optional.items():
            if cond(group):
                make = self.state[key]
                for p, s in zip(params, states):
                    if key not in s:
                        s[key] = make(p, group)
