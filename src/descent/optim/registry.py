"""The optimizer registry, built from the optimizers' declarations.

Every descent optimizer class with a ``declaration`` registers itself under its
``meta.name`` when the class is created; presets (an optimizer with settings users
reach for by name, e.g. ``"sgd-nesterov"``) are registered here. The tasks, the CLI, the
scikit-learn estimators, the audit, the benchmark and the test table read this one
registry, so a new optimizer is known everywhere once its class is declared.

``create_optimizer`` follows the conventions users know from timm's
``create_optimizer_v2`` and pytorch-optimizer's ``create_optimizer``.

Example:
    >>> import torch, descent
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    >>> opt = descent.create_optimizer("lion", model, lr=1e-4, weight_decay=0.1)
    >>> type(opt).__name__, [g["weight_decay"] for g in opt.param_groups]
    ('Lion', [0.1, 0.0])
    >>> "adamw" in descent.list_optimizers()
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._spec import TASK_KINDS, Meta

__all__ = ["register", "register_preset", "register_alias", "list_optimizers", "get_optimizer", "optimizer_info",
           "create_optimizer", "default_lr", "is_adaptive", "Entry"]


@dataclass(frozen=True)
class Entry:
    """One registry name: a class, the settings the name implies, and the class's metadata.

    Attributes:
        name: the key (lower case).
        cls: the optimizer class.
        kwargs: constructor settings the name implies (e.g. Nesterov momentum).
        weight_decay: the weight decay the name implies when the caller gives none.
        description: one line for listings.
        lrs: default lrs per task kind that differ from the class's declared ones.
        alias: a name users know from another library (bitsandbytes' ``adamw8bit``) for a class
            listed under its own name; :func:`list_optimizers` lists it only with ``aliases=True``.
    """

    name: str
    cls: type
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weight_decay: float | None = None
    description: str = ""
    lrs: Mapping[str, float] = field(default_factory=dict)
    alias: bool = False

    def default_lr(self, task_kind: str) -> float | None:
        """The default lr for a kind of task, or None when none is declared."""
        return self.lrs.get(task_kind, self.meta.lr.get(task_kind))

    @property
    def meta(self) -> Meta:
        return self.cls.declaration.meta if getattr(self.cls, "declaration", None) else self.cls.meta


_REGISTRY: dict[str, Entry] = {}


def register(cls: type, name: str | None = None, **kwargs: Any) -> type:
    """Register an optimizer class under its declared name (or ``name``); returns the class."""
    meta = cls.declaration.meta if getattr(cls, "declaration", None) is not None else cls.meta
    key = (name or meta.name).lower()
    _REGISTRY[key] = Entry(key, cls, description=kwargs.pop("description", cls.__name__), **kwargs)
    return cls


def register_preset(name: str, cls: type, *, description: str, weight_decay: float | None = None,
                    lrs: Mapping[str, float] | None = None, **kwargs: Any) -> None:
    """Register ``name`` as ``cls`` built with ``kwargs`` (a default weight decay, default lrs per task kind)."""
    _REGISTRY[name.lower()] = Entry(name.lower(), cls, kwargs, weight_decay, description, dict(lrs or {}))


def register_alias(name: str, cls: type, *, description: str, **kwargs: Any) -> None:
    """Register ``name`` for ``cls`` built with ``kwargs``, as an alias (see :attr:`Entry.alias`): every
    look-up by name takes it (:func:`create_optimizer`, ``descent train --optimizer``), while the
    registry-driven tables (:func:`list_optimizers`) keep one row per optimizer."""
    _REGISTRY[name.lower()] = Entry(name.lower(), cls, kwargs, description=description, alias=True)


def _ensure_loaded() -> None:
    from .. import optim  # noqa: F401 - importing the package registers every class


def list_optimizers(kind: str | None = None, *, aliases: bool = False) -> list[str]:
    """Registered names, optionally only those of one ``kind`` ("elementwise", "matrix", "quasi-newton");
    with ``aliases=True`` also the names users know from other libraries (``"adamw8bit"``...).

    Example:
        >>> import descent
        >>> "muon" in descent.list_optimizers("matrix")
        True
        >>> "adamw8bit" in descent.list_optimizers(), "adamw8bit" in descent.list_optimizers(aliases=True)
        (False, True)
    """
    _ensure_loaded()
    return [k for k, e in _REGISTRY.items() if (kind is None or e.meta.kind == kind) and (aliases or not e.alias)]


def optimizer_info(name: str) -> Entry:
    """The registry entry of ``name`` (case-insensitive); ``ValueError`` listing the valid names."""
    _ensure_loaded()
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"Invalid optimizer: {name!r} (valid: {', '.join(_REGISTRY)})")
    return _REGISTRY[key]


def get_optimizer(name: str) -> type:
    """The class registered as ``name``."""
    return optimizer_info(name).cls


def _meta_of(optimizer: Any) -> Meta | None:
    """The metadata of an optimizer instance, class or name (None when it is not descent's)."""
    if isinstance(optimizer, str):
        return optimizer_info(optimizer).meta
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if not hasattr(cls, "declaration") and not hasattr(cls, "meta") and hasattr(optimizer, "optimizer"):
        cls = type(optimizer.optimizer)  # a wrapper (NonFiniteGuard) around a descent optimizer
    decl = getattr(cls, "declaration", None)
    return decl.meta if decl is not None else getattr(cls, "meta", None)


def is_adaptive(optimizer: Any) -> bool:
    """Whether an optimizer (instance, class or name) adapts its step per coordinate or layer.

    descent's optimizers say so in their declaration; torch's are known by class; any
    other optimizer is treated as adaptive when it keeps a second-moment-like state
    (``exp_avg_sq``, ``square_avg``, ``sum``) and as SGD-like otherwise.
    """
    meta = _meta_of(optimizer)
    if meta is not None:
        return meta.adaptive
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    torch_adaptive = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.RMSprop,
                      torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adadelta,
                      torch.optim.Adafactor, torch.optim.SparseAdam)
    if issubclass(cls, torch_adaptive):
        return True
    if issubclass(cls, (torch.optim.SGD, torch.optim.LBFGS, torch.optim.ASGD, torch.optim.Rprop)):
        return False
    state = getattr(optimizer, "state", {})
    return any(k in s for s in state.values() for k in ("exp_avg_sq", "square_avg", "sum"))


def default_lr(name: str, task_kind: str) -> float:
    """The declared default lr of optimizer ``name`` for a kind of task (:data:`TASK_KINDS`)."""
    if task_kind not in TASK_KINDS:
        raise ValueError(f"Invalid task kind: {task_kind!r} (valid: {', '.join(TASK_KINDS)})")
    lr = optimizer_info(name).default_lr(task_kind)
    if lr is None:
        raise ValueError(f"optimizer {name!r} declares no default lr for {task_kind!r} tasks")
    return lr


def create_optimizer(optimizer: str | type, model_or_params: nn.Module | Iterable[Any], lr: float | None = None,
                     weight_decay: float | None = None, *, no_decay: bool = True, task_kind: str = "classification",
                     **kwargs: Any) -> torch.optim.Optimizer:
    """Build a descent optimizer by name (or class) for a model or a parameter list.

    Args:
        optimizer: a registered name (:func:`list_optimizers`, case-insensitive) or a descent
            optimizer class.
        model_or_params: an ``nn.Module`` (its trainable parameters, named) or params/groups.
        lr: learning rate; None takes the declared default for ``task_kind``.
        weight_decay: None takes the name's preset (else the class default).
        no_decay: with a model, put biases, norm layers, 1-D tensors and embeddings in a
            group without weight decay (:func:`descent.param_groups`).
        task_kind: which declared default lr to use when ``lr`` is None.
        **kwargs: further constructor arguments (they win over the name's preset).

    Returns:
        The optimizer.

    Example:
        >>> import torch, descent
        >>> opt = descent.create_optimizer("sgd", torch.nn.Linear(3, 1), lr=0.1)  # timm's "sgd": Nesterov momentum
        >>> opt.param_groups[0]["nesterov"], opt.param_groups[0]["momentum"]
        (True, 0.9)
    """
    if isinstance(optimizer, type):
        if _meta_of(optimizer) is None:
            raise ValueError(f"Invalid optimizer: {optimizer!r} is not a descent optimizer class")
        entry = Entry(_meta_of(optimizer).name, optimizer)
    else:
        entry = optimizer_info(optimizer)
    meta = entry.meta
    if lr is None:
        lr = entry.default_lr(task_kind)
    wd = weight_decay
    for fallback in (entry.weight_decay, meta.weight_decay):
        wd = fallback if wd is None else wd
    options = {**entry.kwargs, **kwargs}
    if lr is not None:
        options["lr"] = lr
    if meta.takes_model:
        if not isinstance(model_or_params, nn.Module):
            raise TypeError(f"{entry.cls.__name__} needs the model itself, got {type(model_or_params).__name__}")
        if wd is not None:
            options.setdefault("weight_decay", wd)
        return entry.cls(model_or_params, **options)
    if wd is None:
        wd = _class_default(entry.cls, "weight_decay")
    if isinstance(model_or_params, nn.Module) and no_decay:
        from .param_groups import param_groups

        params: Any = param_groups(model_or_params, weight_decay=wd)
    else:
        params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
        options["weight_decay"] = wd
    return entry.cls(params, **options)


def _class_default(cls: type, name: str) -> Any:
    """The default of constructor argument ``name`` (0.0 when the class has none)."""
    import inspect

    param = inspect.signature(cls.__init__).parameters.get(name)
    return 0.0 if param is None or param.default is inspect.Parameter.empty else param.default


