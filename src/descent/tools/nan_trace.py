"""Name the first module whose input, output or gradient turned non-finite (one forward/backward)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._findings import Finding

__all__ = ["trace_nan", "NanTrace"]


def _nonfinite(x: Any) -> bool:
    if isinstance(x, Tensor):
        return bool(x.numel()) and (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all())
    if isinstance(x, (tuple, list)):
        return any(_nonfinite(v) for v in x)
    if isinstance(x, dict):
        return any(_nonfinite(v) for v in x.values())
    return False


@dataclass
class NanTrace:
    """Where non-finite values first appeared.

    Attributes:
        module: qualified name of the culprit module (``""`` = the root model), or ``None`` when all
            values were finite; for ``kind="param"`` / ``"param_grad"``, the parameter's name.
        kind: ``"input"`` (the data reaching it was already bad), ``"output"`` (it produced the
            first non-finite value in the forward pass), ``"grad"`` (backward: its input-gradient
            became non-finite while the gradient it received was finite), ``"param"``, ``"param_grad"``,
            ``"loss"`` (only the loss function) or ``None``.
        phase: ``"forward"`` or ``"backward"`` (``None`` when nothing was found).
        events: every (phase, module, what) seen in order, for the full picture.
        loss: the loss value.
    """

    module: str | None
    kind: str | None
    phase: str | None
    loss: float | None
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """True when something non-finite was found."""
        return self.kind is not None

    def finding(self) -> Finding | None:
        """The trace as a doctor :class:`Finding` (``None`` when nothing was found)."""
        if not self.found:
            return None
        where = repr(self.module) if self.module else "the model's input"
        return Finding("nonfinite", "error", f"first non-finite {self.kind} at {where} ({self.phase})",
                       {"module": self.module, "kind": self.kind, "phase": self.phase, "events": self.events[:20]},
                       "look for log(0), division by zero, sqrt of 0 in backward or overflow there; "
                       "clip gradients (max_norm=1.0) meanwhile", "003 (Gradient descent): debug_nan_loss")


def trace_nan(model: nn.Module, inputs: Any, loss_fn: Callable[..., Tensor] | None = None,
              target: Any = None, *, forward: Callable[[nn.Module, Any], Tensor] | None = None) -> NanTrace:
    """Run one forward and backward under module hooks and report the first non-finite value.

    The source documents' ``debug_nan_loss`` checklist (input, output, gradients), made automatic and
    located per module: forward hooks check every module's inputs and outputs in execution order,
    full backward hooks check the gradients flowing through each module, then the parameters and
    their gradients are checked. The first module whose *output* is non-finite while its inputs were
    finite is the forward culprit (children report before their parents, so the innermost module is
    named); in backward, the first module whose input-gradient is non-finite while the gradient it
    received was finite. Cheaper than ``torch.autograd.detect_anomaly`` (no traceback per op, one
    ``isfinite`` per module boundary). Parameters' ``.grad`` are restored afterwards.

    Args:
        model: the module.
        inputs: the batch input; a tuple is unpacked into ``model(*inputs)``, a dict into ``model(**inputs)``.
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` when ``target`` is None); when
            omitted the output's sum is back-propagated.
        target: the target passed to ``loss_fn``.
        forward: ``forward(model, inputs) -> loss`` replaces the above for other layouts.

    Returns:
        A :class:`NanTrace`.

    Example:
        >>> import torch, descent
        >>> class Log(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.log(x)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), Log())
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(-1.0), model[0].bias.zero_()
        >>> t = descent.trace_nan(model, torch.ones(3, 2))
        >>> t.module, t.kind
        ('2', 'output')
    """
    names = {m: n for n, m in model.named_modules()}
    if not names:
        raise ValueError("Invalid model: not a torch.nn.Module")
    events: list[tuple[str, str, str]] = []
    handles = []

    def pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
        if _nonfinite(args) or _nonfinite(kwargs):
            events.append(("forward", names[mod], "input"))

    def post(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        if _nonfinite(out):
            events.append(("forward", names[mod], "output"))

    def back(mod: nn.Module, grad_in: Any, grad_out: Any) -> None:
        if _nonfinite(grad_out):
            events.append(("backward", names[mod], "grad_output"))
        if _nonfinite(grad_in):
            events.append(("backward", names[mod], "grad"))

    saved = [(p, p.grad) for p in model.parameters()]
    for mod in names:
        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post, with_kwargs=True))
        handles.append(mod.register_full_backward_hook(back))
    try:
        for p, _ in saved:
            p.grad = None
        loss = _loss(model, inputs, loss_fn, target, forward)
        if loss.requires_grad:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook")
                loss.backward()
        param_events = _param_events(model)
    finally:
        for h in handles:
            h.remove()
        for p, g in saved:
            p.grad = g
    events += param_events
    return _verdict(events, float(loss.detach().float().sum()) if loss.numel() else None)


def _loss(model: nn.Module, inputs: Any, loss_fn: Any, target: Any, forward: Any) -> Tensor:
    if forward is not None:
        return forward(model, inputs)
    out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if loss_fn is None:
        return out.sum() if isinstance(out, Tensor) else sum(o.sum() for o in out)
    return loss_fn(out) if target is None else loss_fn(out, target)


def _param_events(model: nn.Module) -> list[tuple[str, str, str]]:
    ev = []
    for n, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            ev.append(("params", n, "param"))
        elif p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            ev.append(("params", n, "param_grad"))
    return ev


def _verdict(events: list[tuple[str, str, str]], loss: float | None) -> NanTrace:
    for phase, what in (("params", "param"),):
        hit = [e for e in events if e[0] == phase and e[2] == what]
        if hit:
            return NanTrace(hit[0][1], "param", "forward", loss, events)
    fwd = [e for e in events if e[0] == "forward"]
    if fwd:
        name, what = fwd[0][1], fwd[0][2]
        return NanTrace(name, "input" if what == "input" else "output", "forward", loss, events)
    if loss is not None and not math.isfinite(loss):
        return NanTrace(None, "loss", "forward", loss, events)
    for e in events:
        if e[0] == "backward" and e[2] == "grad":
            return NanTrace(e[1], "grad", "backward", loss, events)
    grads = [e for e in events if e[2] == "param_grad"]
    if grads:
        return NanTrace(grads[0][1], "param_grad", "backward", loss, events)
    return NanTrace(None, None, None, loss, events)
