"""One device/dtype bucket of a declared optimizer: kernel for what it can take, functional for the rest.

:func:`run_declaration` is the body of the shared step loop (:mod:`descent.optim._base`)
for one bucket. It reads the declaration (:mod:`descent.optim._spec`): the group's
hyperparameters, the state columns, the step counters and the kernel bound to the
chosen backend.

**capturable.** In a group with ``capturable=True`` the step counters stay float32
device tensors (advanced with one multi-tensor add), a tensor ``lr`` (or other tensor
hyperparameter the declaration keeps, :func:`descent.optim._spec.scalar`) stays on its
device, and a kernel declared ``capturable`` runs the bucket: nothing is read back to
the host, so the step can be captured in a CUDA graph. Tensors no kernel can take
(non-contiguous, cautious groups, a backend without a capturable kernel) run the
functional, which needs the numbers on the host: allowed in eager mode, a clear
``RuntimeError`` while a CUDA graph is being captured.

Example:
    >>> import torch, descent
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = descent.Adam([w], lr=torch.tensor(0.1), capturable=True)
    >>> w.sum().backward(); _ = opt.step()
    >>> opt.state[w]["step"]
    tensor(1.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .. import kernels as K
from ._compile import _NEXT_STEP
from ._spec import Declaration, Kernel

__all__ = ["run_declaration", "advance_steps"]


def advance_steps(steps: list[Tensor]) -> list[int]:
    """Add 1 to every step counter of a bucket (one multi-tensor op, or one compiled loop over
    float32 CPU counters: :func:`descent.kernels.multi.advance_counters`) and return the new values."""
    if K.AVAILABLE and steps and not torch.compiler.is_compiling():  # dynamo cannot trace into Numba's dispatcher
        from ..kernels.multi import advance_counters

        ints = advance_counters(steps)
        if ints is not None:
            return ints
    torch._foreach_add_(steps, 1.0)
    return [int(v) for v in torch.stack(steps).tolist()]


def _bump(steps: list[Tensor]) -> None:
    """Add 1 to every counter, reading nothing back: float32 CPU counters in one compiled loop
    (:func:`descent.kernels.multi.advance_counters`: 0.055 ms for 196, where one ``torch._foreach_add_``
    takes 0.30 ms), the others (device counters, inside ``torch.compile``) with
    one multi-tensor add."""
    if K.AVAILABLE and steps and not torch.compiler.is_compiling():
        from ..kernels.multi import advance_counters

        if advance_counters(steps) is not None:
            return
    torch._foreach_add_(steps, 1.0)


def run_declaration(decl: Declaration, backend: str, group: dict[str, Any], params: list[Tensor],
                    grads: list[Tensor], states: list[dict[str, Any]],
                    overrides: Mapping[str, Any] | None = None, grad_scale: Tensor | None = None) -> None:
    """One bucket of ``decl``'s optimizer on ``backend``: its kernel for the tensors it can
    take (dense, contiguous, non-empty), the functional for the rest.

    Also used for a part of another optimizer (Muon's auxiliary AdamW).
    """
    decl.ensure_optional(group, params, states)
    hp = decl.hyper(group)
    if overrides:
        hp.update((k, v) for k, v in overrides.items() if v is not None)
    cols = [[s.get(k) for s in states] for k in decl.columns]
    capturable = bool(group.get("capturable"))
    # no kernel implements cautious masking: such a group runs the functional
    kernel = None
    if params and not group.get("cautious"):
        kernel = decl.kernel_for(backend, params[0].device, params[0].dtype, capturable)
    if kernel is not None:
        if kernel.dense_only:
            fast, rest = K.partition(params, grads, *cols)
        else:
            fast, rest = list(range(len(params))), []
        if fast:
            grads = _run_kernel(decl, kernel, hp, capturable, params, grads, states, cols, fast, grad_scale)
    else:
        rest = list(range(len(params)))
    if rest:
        # an empty tensor's update reads no number: under capturable it needs none from the device
        blind = capturable and not any(params[i].numel() for i in rest)
        hp = ({k: 0.0 if isinstance(v, Tensor) else v for k, v in hp.items()} if blind
              else _host(hp) if capturable else hp)
        _run_functional(decl, hp, params, grads, states, cols, rest, grad_scale, blind)


def _run_kernel(decl: Declaration, kernel: Kernel, hp: dict[str, Any], capturable: bool, params: list[Tensor],
                grads: list[Tensor], states: list[dict[str, Any]], cols: list[list[Any]], fast: list[int],
                grad_scale: Tensor | None) -> list[Tensor]:
    """The kernel on the tensors at ``fast``; returns the gradients (unscaled copies where needed)."""
    every = len(fast) == len(params)  # the usual case: the columns as they are, no copies
    step_tensors = [states[i]["step"] for i in fast] if decl.steps else None
    kw: dict[str, Any] = {k: c if every else K.take(c, fast) for k, c in zip(decl.columns, cols)}
    on_device = capturable and kernel.capturable  # steps and hyperparameters stay on the device
    if kernel.capturable:
        kw["capturable"] = capturable
    elif capturable:
        hp = _host(hp)
    if kernel.steps == "tensor":
        kw["steps"] = step_tensors
    elif kernel.steps == "int" and step_tensors is not None and on_device:
        torch._foreach_add_(step_tensors, 1.0)
        kw["steps"] = step_tensors
    elif kernel.steps == "int":
        kw["steps"] = _advanced_ints(states, fast, step_tensors) if step_tensors is not None else None
    elif step_tensors is not None:
        _bump(step_tensors)
    if kernel.amp:
        kw["grad_scale"] = grad_scale
        kw["found_inf"] = None if grad_scale is None else torch.zeros_like(grad_scale)
    elif grad_scale is not None:
        grads = _unscaled(grads, fast, grad_scale)
    _launch(decl, kernel, hp)(params=params if every else K.take(params, fast),
                              grads=grads if every else K.take(grads, fast), **kw, **hp)
    if decl.loop_returns is not None:  # lazily created state (SGD's momentum_buffer)
        for j, i in enumerate(fast):
            if kw[decl.loop_returns][j] is not None:
                states[i][decl.loop_returns] = kw[decl.loop_returns][j]
    return grads


def _run_functional(decl: Declaration, hp: Mapping[str, Any], params: list[Tensor], grads: list[Tensor],
                    states: list[dict[str, Any]], cols: list[list[Any]], rest: list[int],
                    grad_scale: Tensor | None, blind: bool = False) -> None:
    """The per-tensor functional on the tensors at ``rest`` (``blind``: all empty, so the
    step numbers are not read back: any number gives the same, empty, update)."""
    if grad_scale is not None:
        grads = _unscaled(grads, rest, grad_scale)
    ints = None
    if decl.steps:
        if decl.step_arg and not blind:
            ints = _advanced_ints(states, rest)
        else:
            _bump([states[i]["step"] for i in rest])
            ints = [1] * len(rest) if decl.step_arg else None
    for k, i in enumerate(rest):
        extra = {"step": ints[k]} if ints is not None and decl.step_arg else {}
        out = decl.functional(params[i], grads[i], *(c[i] for c in cols), **extra, **hp)
        if decl.loop_returns is not None and out is not None:
            states[i][decl.loop_returns] = out


def _capturing() -> bool:
    """A CUDA graph is being captured on the current stream (nothing is before CUDA is initialized,
    and asking then would initialize it); cheap, so it comes before any per-tensor test."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _host(hp: Mapping[str, Any]) -> dict[str, Any]:
    """A capturable group's hyperparameters as Python floats, for a path that is not capturable.

    Raises:
        RuntimeError: while a CUDA graph is being captured (the step would read the device).
    """
    if _capturing():
        raise RuntimeError("capturable=True: a tensor of this bucket cannot be stepped without a host sync "
                           "(a non-contiguous tensor, a cautious group or a backend without a capturable "
                           "kernel); make the tensors contiguous or choose backend='fused'")
    return {k: float(v) if isinstance(v, Tensor) and v.numel() == 1 else v for k, v in hp.items()}


def _advanced_ints(states: list[dict[str, Any]], positions: list[int],
                   steps: list[Tensor] | None = None) -> list[int]:
    """Add 1 to the step counters at ``positions`` and return their new values as ints.

    Inside ``torch.compile`` the values come from :func:`_prepare_compile` (read from the
    state as Python ints, which dynamo turns into symbolic ints after their first change)
    instead of a ``.tolist()`` that would break the graph.
    """
    if steps is None:  # else the caller's list of the same counters
        steps = [states[i]["step"] for i in positions]
    if torch.compiler.is_compiling() and all(_NEXT_STEP in states[i] for i in positions):
        torch._foreach_add_(steps, 1.0)
        return [states[i][_NEXT_STEP] for i in positions]
    if _capturing() and any(s.device.type != "cpu" for s in steps):
        raise RuntimeError("capturable=False: the step counters are read on the host, which a CUDA graph "
                           "cannot capture; pass capturable=True")
    return advance_steps(steps)


def _unscaled(grads: list[Tensor], positions: list[int], grad_scale: Tensor) -> list[Tensor]:
    """``grads`` with the entries at ``positions`` divided by ``GradScaler``'s scale (new tensors)."""
    out = list(grads)
    for i, g in zip(positions, torch._foreach_div([grads[i] for i in positions], grad_scale.to(grads[0].device))):
        out[i] = g
    return out


_CHECKED: dict[tuple, Callable[..., None]] = {}


def _launch(decl: Declaration, kernel: Any, hp: Mapping[str, Any]) -> Callable[..., None]:
    """The kernel's launcher, its signature checked against the declaration on first use."""
    if torch.compiler.is_compiling():  # dynamo cannot hash the key; the eager path checks it
        return kernel.resolve()
    key = (kernel, decl.columns, frozenset(hp))
    fn = _CHECKED.get(key)
    if fn is None:
        kernel.check(decl, hp)
        fn = _CHECKED[key] = kernel.resolve()
    return fn
