"""CPU offload for GPU training: fp32 master weights and optimizer state on the host.

:class:`CPUOffloadOptimizer` keeps, for every parameter on the device, an fp32 master copy on the CPU and a
descent optimizer (any registered class or name; AdamW by default) that steps those masters with descent's CPU
kernels. The device holds only the parameters (in their own dtype, e.g. bf16) and, transiently, their gradients,
so the optimizer state and the fp32 weights cost no device memory.

The data flow of one step on a CUDA device:

- gradients go device -> host into pinned buffers, ``non_blocking`` on a side stream. With
  ``offload_gradients=True`` each one is copied as soon as autograd has accumulated it
  (``register_post_accumulate_grad_hook``), so the copies overlap the rest of the backward, and its device
  memory is released; a second backward before the step (gradient accumulation) is added on the host in fp32.
  With ``offload_gradients=False`` (the default) the gradients stay on the device until :meth:`step` copies
  them, so anything done to ``p.grad`` in between (``torch.nn.utils.clip_grad_norm_``, accumulation) counts.
- :meth:`clip_grad_norm_` (or ``max_norm=``) clips the host gradients with one norm over all of them, exactly as
  ``torch.nn.utils.clip_grad_norm_`` would on the device — this also works with ``offload_gradients=True``,
  where the device gradients are gone.
- the inner optimizer steps the fp32 masters on the CPU; the new values are rounded to the parameters' dtype on
  the host (halving the transfer for bf16) and copied host -> device on the side stream. The step then makes the
  current stream wait on an event recorded after those copies, so the next forward reads the new weights without
  blocking the host; the next step waits for the copies before it overwrites the host buffers.

Every parameter is offloaded (torchao keeps tensors below ``minimal_size`` on the device; here they are few
bytes and stepped on the host too). ``torch.amp.GradScaler`` works with ``offload_gradients=False`` only (it
unscales the device gradients, which ``True`` has already moved); bf16 training needs no scaler.

On a machine without CUDA (parameters on the CPU) every copy is a plain copy, which is how the equality with the
non-offloaded optimizer is tested. Only the transfer buffers (fp32 masters, gradient and bf16 staging buffers)
are pinned, and only when CUDA is available; the optimizer state never moves, so it stays in ordinary memory.

``param_groups`` are views: ``"params"`` are the device parameters, every other key reads and writes the inner
optimizer's group, so torch's LR schedulers, ``descent.attach`` and ``ReduceLROnPlateau`` drive it.
``state_dict`` is the inner optimizer's (torch's layout, device parameter order) plus the fp32 masters of
parameters that are not fp32 on the device, so a resume is bit-exact; load the model's weights before the
optimizer's state (the masters of fp32 parameters are refreshed from the device parameters then).

Example:
    >>> import torch, descent
    >>> model = torch.nn.Linear(8, 2)  # .cuda() on a GPU machine
    >>> opt = descent.CPUOffloadOptimizer(model.parameters(), "adamw", lr=1e-2, offload_gradients=True)
    >>> model(torch.randn(4, 8)).pow(2).mean().backward()
    >>> model.weight.grad is None  # already on the host
    True
    >>> norm = opt.clip_grad_norm_(1.0)
    >>> opt.step(); opt.zero_grad()
    >>> type(opt.inner).__name__, opt.param_groups[0]["params"][0] is model.weight
    ('AdamW', True)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import torch
from torch import Tensor

from .distributed._layout import any_dtensor
from .optim._validate import check_positive
from .optim.adam import AdamW
from .optim.registry import _meta_of, optimizer_info
from .stability.clip import ClipResult, clip_grad_norm_

__all__ = ["CPUOffloadOptimizer"]

_HOOKS = ("step_pre", "step_post", "state_dict_pre", "state_dict_post", "load_state_dict_pre", "load_state_dict_post")


class _GroupView(MutableMapping):
    """One param group as the user sees it: the device params, the inner group's hyperparameters."""

    def __init__(self, inner: dict[str, Any], params: list[Tensor]) -> None:
        self._inner, self._params = inner, params

    def __getitem__(self, key: str) -> Any:
        return self._params if key == "params" else self._inner[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "params":
            raise KeyError("the params of an offloaded group are fixed (use add_param_group for new ones)")
        self._inner[key] = value

    def __delitem__(self, key: str) -> None:
        if key == "params":
            raise KeyError("the params of an offloaded group are fixed")
        del self._inner[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return repr({k: (f"<{len(self._params)} params>" if k == "params" else v) for k, v in self.items()})


def _resolve(optimizer_class: Any, kwargs: dict[str, Any]) -> type:
    """The inner optimizer class (a registered name's preset settings go into ``kwargs``)."""
    if isinstance(optimizer_class, str):
        entry = optimizer_info(optimizer_class)
        for key, value in entry.kwargs.items():
            kwargs.setdefault(key, value)
        if entry.weight_decay is not None:
            kwargs.setdefault("weight_decay", entry.weight_decay)
        optimizer_class = entry.cls
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError(f"Invalid optimizer_class: {optimizer_class!r} (a torch.optim.Optimizer subclass or a "
                        "registered name, see descent.list_optimizers())")
    meta = _meta_of(optimizer_class)
    if meta is not None and meta.takes_model:
        raise ValueError(f"Invalid optimizer_class: {optimizer_class.__name__} needs the model itself and "
                         "cannot step offloaded copies")
    return optimizer_class


def _groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    if isinstance(params, Tensor):
        raise TypeError(f"params argument should be an iterable of Tensors or dicts, but got {torch.typename(params)}")
    groups = list(params)
    if not groups:
        raise ValueError("Invalid params: CPUOffloadOptimizer got an empty parameter list")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return [dict(g, params=[g["params"]] if isinstance(g["params"], Tensor) else list(g["params"])) for g in groups]


class CPUOffloadOptimizer(torch.optim.Optimizer):
    """Step a model's parameters with an optimizer whose fp32 weights and state live on the CPU.

    Args:
        params: parameters or param groups (as for any optimizer), all on one device, floating point.
        optimizer_class: the optimizer that steps the host copies: a registered name
            (``"adamw"``, ``"lion"``, ``"sgd-nesterov"``, ... see :func:`descent.list_optimizers`)
            or an optimizer class (default :class:`descent.AdamW`). Optimizers that need the
            model itself (K-FAC) are refused.
        offload_gradients: copy each gradient to the host as soon as it is ready (overlapping
            the backward) and free it on the device; otherwise :meth:`step` copies them.
        max_norm: clip the gradients to this total norm in every step (``None``: no clipping).
        norm_type: the norm of ``max_norm`` clipping (as ``torch.nn.utils.clip_grad_norm_``).
        **kwargs: the inner optimizer's arguments (``lr``, ``weight_decay``, ``state_bits``, ...).

    Attributes:
        inner: the optimizer over the host masters.

    See the module docstring for the data flow and an example.
    """

    def __init__(self, params: Iterable[Any], optimizer_class: type | str = AdamW, *,
                 offload_gradients: bool = False, max_norm: float | None = None, norm_type: float = 2.0,
                 **kwargs: Any) -> None:
        if max_norm is not None:
            check_positive("max_norm", max_norm)
        if not float(norm_type) > 0:
            raise ValueError(f"Invalid norm_type: {norm_type} (must be > 0)")
        cls = _resolve(optimizer_class, kwargs)
        self.offload_gradients, self.max_norm, self.norm_type = bool(offload_gradients), max_norm, float(norm_type)
        self._params: list[Tensor] = []
        self._masters: list[Tensor] = []
        self._index: dict[int, int] = {}  # id(device param) -> position
        self._mindex: dict[int, int] = {}  # id(master) -> position
        self._grads: dict[int, Tensor] = {}  # fp32 host gradient buffers
        self._grad_stage: dict[int, Tensor] = {}  # device-dtype pinned buffers for D2H (non-fp32 grads)
        self._param_stage: dict[int, Tensor] = {}  # device-dtype pinned buffers for H2D (non-fp32 params)
        self._pending: dict[int, Any] = {}  # gradient copies issued, not yet waited for (index -> event)
        self._ready: set[int] = set()  # masters whose .grad holds this step's gradient
        self._device: torch.device | None = None
        self._stream: Any = None
        self._transient()
        host_groups = [self._adopt(g) for g in _groups(params)]
        self.inner = cls(host_groups, **kwargs)

    # ------------------------------------------------------------------ setup
    def _transient(self) -> None:
        """What no copy carries: the copy event, group views, gradient hooks and torch's hook registries."""
        self._h2d_event: Any = None
        self._views: list[_GroupView] = []
        self._hooks: list[Any] = []
        for kind in _HOOKS:  # register_step_pre_hook, register_state_dict_pre_hook, ...
            setattr(self, f"_optimizer_{kind}_hooks", OrderedDict())

    def _adopt(self, group: dict[str, Any]) -> dict[str, Any]:
        """Make host masters for a group's device params; return the group over the masters."""
        masters = []
        for p in group["params"]:
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise ValueError(f"Invalid params: CPUOffloadOptimizer needs floating-point tensors, got "
                                 f"{p.dtype if isinstance(p, Tensor) else type(p).__name__}")
            if id(p) in self._index:
                raise ValueError(f"Invalid params: parameter {len(masters)} (shape {tuple(p.shape)}) is given twice")
            if any_dtensor([p]):
                raise ValueError("Invalid params: CPUOffloadOptimizer is for single-device training; got a DTensor "
                                 "(FSDP2 has its own CPUOffloadPolicy)")
            if self._device is None:
                self._device = p.device
                if p.device.type == "cuda":
                    self._stream = torch.cuda.Stream(p.device)
            elif p.device != self._device:
                raise ValueError(f"Invalid params: all parameters must be on one device, got {self._device} and "
                                 f"{p.device}")
            pin = self._stream is not None
            master = torch.empty(p.shape, dtype=torch.float32, pin_memory=pin)
            master.copy_(p.detach())
            self._index[id(p)] = self._mindex[id(master)] = len(self._params)
            self._params.append(p)
            self._masters.append(master)
            masters.append(master)
            if self.offload_gradients and p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._on_grad))
        return {**group, "params": masters}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of device parameters (host masters are made for them)."""
        self.inner.add_param_group(self._adopt(_groups([param_group])[0]))

    @property
    def param_groups(self) -> list[_GroupView]:  # type: ignore[override]
        inner = self.inner.param_groups
        if len(self._views) != len(inner) or any(v._inner is not g for v, g in zip(self._views, inner)):
            self._views = [_GroupView(g, [self._params[self._mindex[id(m)]] for m in g["params"]]) for g in inner]
        return self._views

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.inner.defaults

    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:  # type: ignore[override]
        """The inner optimizer's state, keyed by the device parameters."""
        return {self._params[i]: self.inner.state[m] for i, m in enumerate(self._masters) if m in self.inner.state}

    # ------------------------------------------------------------ transfers
    def _stage(self, buffers: dict[int, Tensor], i: int, dtype: torch.dtype) -> Tensor:
        buf = buffers.get(i)
        if buf is None or buf.dtype != dtype:
            buf = buffers[i] = torch.empty(self._masters[i].shape, dtype=dtype, pin_memory=self._stream is not None)
        return buf

    def _host_grad(self, i: int) -> Tensor:
        m = self._masters[i]
        if i not in self._grads:  # pinned only where the device -> host copy lands in it (fp32 gradients)
            pin = self._stream is not None and self._params[i].dtype == torch.float32
            self._grads[i] = torch.empty(m.shape, dtype=torch.float32, pin_memory=pin)
        return self._grads[i]

    def _copy_grad(self, i: int, grad: Tensor) -> None:
        """Start the device -> host copy of parameter ``i``'s gradient."""
        if grad.is_sparse:
            raise RuntimeError(f"CPUOffloadOptimizer does not support sparse gradients (parameter {i})")
        dst = self._host_grad(i) if grad.dtype == torch.float32 else self._stage(self._grad_stage, i, grad.dtype)
        if self._stream is None:
            dst.copy_(grad)
            self._pending[i] = None
            return
        self._stream.wait_stream(torch.cuda.current_stream(grad.device))
        with torch.cuda.stream(self._stream):
            dst.copy_(grad, non_blocking=True)
            grad.record_stream(self._stream)  # its memory is not reused before the copy is done
            self._pending[i] = self._stream.record_event()

    def _finish_grad(self, i: int) -> None:
        """Wait for parameter ``i``'s copy and hand the fp32 gradient to its master."""
        event = self._pending.pop(i)
        if event is not None:
            event.synchronize()
        grad = self._host_grad(i)
        stage = self._grad_stage.get(i)
        if stage is not None:
            grad.copy_(stage)
        self._masters[i].grad = grad
        self._ready.add(i)

    def _on_grad(self, p: Tensor) -> None:
        """Post-accumulate-grad hook (``offload_gradients=True``): copy now, free the device gradient."""
        i = self._index[id(p)]
        if i in self._pending or i in self._ready:  # accumulation: add this backward's gradient on the host
            if i in self._pending:
                self._finish_grad(i)
            with torch.no_grad():
                self._masters[i].grad.add_(p.grad.to("cpu", torch.float32))
        else:
            self._copy_grad(i, p.grad)
        p.grad = None

    def _gather(self) -> None:
        """Every gradient of this step on the host, in its master's ``.grad``.

        Device gradients not copied yet are copied now: all of them with ``offload_gradients=False``,
        and with ``True`` those set without a backward (``p.grad = g``), which fires no hook.
        """
        for i, p in enumerate(self._params):
            if p.grad is not None and i not in self._pending and i not in self._ready:
                self._copy_grad(i, p.grad)
        for i in list(self._pending):
            self._finish_grad(i)

    def _wait_h2d(self) -> None:
        if self._h2d_event is not None:
            self._h2d_event.synchronize()
            self._h2d_event = None

    def _send(self, indices: Iterable[int]) -> None:
        """Copy the stepped masters to the device parameters (async on CUDA; the current stream waits)."""
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self._device))
        for i in indices:
            p, m = self._params[i], self._masters[i]
            src = m if p.dtype == torch.float32 else self._stage(self._param_stage, i, p.dtype).copy_(m)
            if self._stream is None:
                p.copy_(src)
                continue
            with torch.cuda.stream(self._stream):
                p.copy_(src, non_blocking=True)
        if self._stream is not None:
            self._h2d_event = self._stream.record_event()
            torch.cuda.current_stream(self._device).wait_event(self._h2d_event)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> ClipResult:
        """Clip all gradients (on the host) to a total norm of ``max_norm``; return the norm before.

        The same numbers as ``torch.nn.utils.clip_grad_norm_`` over the model's gradients
        (:func:`descent.clip_grad_norm_`: one norm over every gradient, ``1e-6`` added);
        call it between the backward and :meth:`step`. Works with ``offload_gradients=True``.
        """
        self._gather()
        return clip_grad_norm_([self._masters[i] for i in sorted(self._ready)], max_norm, norm_type,
                               error_if_nonfinite)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Gather the gradients, clip (``max_norm``), step the host masters, send them back.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or ``None``.
        """
        args, kwargs = (), ({} if closure is None else {"closure": closure})
        for hook in list(self._optimizer_step_pre_hooks.values()):  # torch's step hooks (descent.attach uses them)
            result = hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        closure = kwargs.get("closure", args[0] if args else None)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_masters()
        for hook in list(self._optimizer_step_post_hooks.values()):
            hook(self, args, kwargs)
        return loss

    @torch.no_grad()
    def _step_masters(self) -> None:
        """Gather, clip, step the host masters, send them to the device."""
        self._gather()
        if self.max_norm is not None:
            self.clip_grad_norm_(self.max_norm, self.norm_type)
        self._wait_h2d()  # the last step's copies read the masters and staging buffers
        self.inner.step()
        stepped = sorted(self._ready)
        self._send(stepped)
        for i in stepped:
            self._masters[i].grad = None
        self._ready.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the device gradients (as torch does) and drop any gradient already on the host."""
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
                continue
            p.grad.detach_() if p.grad.grad_fn is not None else p.grad.requires_grad_(False)
            p.grad.zero_()
        for i in list(self._pending):
            self._finish_grad(i)
        for i in self._ready:
            self._masters[i].grad = None
        self._ready.clear()

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus ``master_weights``: the fp32 masters of the
        parameters that are not fp32 on the device (index -> tensor)."""
        for hook in list(self._optimizer_state_dict_pre_hooks.values()):
            hook(self)
        self._wait_h2d()
        sd = self.inner.state_dict()
        sd["master_weights"] = {i: m for i, (p, m) in enumerate(zip(self._params, self._masters))
                                if p.dtype != torch.float32}
        for hook in list(self._optimizer_state_dict_post_hooks.values()):  # torch's: may return a new one
            sd = hook(self, sd) or sd
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; masters not in it are refreshed from the device parameters."""
        for hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            state_dict = hook(self, state_dict) or state_dict
        state_dict = dict(state_dict)
        saved = {int(k): v for k, v in state_dict.pop("master_weights", {}).items()}
        bad = [k for k in saved if not 0 <= k < len(self._masters)]
        if bad:
            raise ValueError(f"Invalid state_dict: master_weights for parameter {bad[0]}, but the optimizer has "
                             f"{len(self._masters)} parameters")
        self._wait_h2d()
        self.inner.load_state_dict(state_dict)
        with torch.no_grad():
            for i, (p, m) in enumerate(zip(self._params, self._masters)):
                m.copy_(saved[i] if i in saved else p.detach())
        for hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        """All but the stream, :meth:`_transient` and an LR scheduler's wrapper of ``step`` (torch's keeps only
        its views and drops those too)."""
        for i in list(self._pending):  # copies already issued land, as the next step would wait for them
            self._finish_grad(i)
        self._wait_h2d()
        return {k: v for k, v in self.__dict__.items() if k not in ("_stream", "_h2d_event", "_views", "_hooks", "step",
                                                                    "_opt_called") and not k.startswith("_optimizer_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Remake what :meth:`__getstate__` left out and the indices by ``id`` (a copy has new tensors)."""
        self.__dict__.update(state)
        self._transient()
        self._stream = torch.cuda.Stream(self._device) if getattr(self._device, "type", "") == "cuda" else None
        self._index, self._mindex = ({id(t): i for i, t in enumerate(ts)} for ts in (self._params, self._masters))
        for i in self._ready:  # a pickled tensor leaves its .grad behind
            self._masters[i].grad = self._host_grad(i)
        if self.offload_gradients:
            self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self._params if p.requires_grad]

    def __repr__(self) -> str:
        return f"CPUOffloadOptimizer({self.inner!r}, offload_gradients={self.offload_gradients})"
