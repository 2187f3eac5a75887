"""Every descent optimizer as an entry of torch's generic optimizer test machinery.

torch ships ``OptimizerInfo``/``OptimizerInput`` and the per-optimizer input functions
in ``torch.testing._internal.common_optimizers``; its ``test/test_optim.py`` runs every
``optim_db`` entry through the same generic checks. This module builds one
:class:`DescentOptimInfo` (an ``OptimizerInfo``) per descent optimizer:

* the optimizer list comes from ``descent.list_optimizers()`` when the registry exists,
  else from :data:`FALLBACK_NAMES`; an optimizer nobody wrote inputs for gets inputs
  derived from its signature, so a new optimizer is checked without touching this file;
* where torch has the algorithm, the inputs are exactly torch's ``optim_db`` inputs
  (translated where descent names an argument differently, e.g. Adafactor);
* the backends (``loop``/``foreach``/``fused``) are probed, not listed, and
  :func:`all_inputs` adds one input per backend to torch's cliquey-flag expansion
  (``_get_optim_inputs_including_global_cliquey_kwargs``), which drops foreach on CPU.

``tests/test_torch_contract.py`` holds the checks.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.testing._internal import common_optimizers as co
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerInfo,
    OptimizerInput,
    _get_optim_inputs_including_global_cliquey_kwargs,
)

import descent

__all__ = ["DescentOptimInfo", "INFOS", "all_inputs", "assert_same", "make_from_model"]

FALLBACK_NAMES = ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Lion", "LAMB", "Adafactor", "SophiaG",
                  "Muon", "Shampoo", "KFAC", "LBFGS")

#: torch's optim_db entry for the optimizers torch also has (same algorithm and arguments).
_TORCH = {"SGD": "SGD", "Adagrad": "Adagrad", "RMSprop": "RMSprop", "Adam": "Adam", "AdamW": "AdamW",
          "Muon": "Muon", "LBFGS": "LBFGS", "Adafactor": "Adafactor"}
#: Optimizers whose numbers must equal torch.optim's (Adafactor and Muon differ by design).
_SAME_MATH = {"SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "LBFGS"}
#: torch supports differentiable=True for these (the loop path with autograd-tracked ops).
TORCH_DIFFERENTIABLE = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop")
#: descent's Adafactor names two of torch's arguments differently (same meaning).
_ADAFACTOR_NAMES = {"beta2_decay": "decay_rate", "d": "clip_threshold"}


def _inputs(*configs: tuple[str, dict[str, Any]]) -> Callable[..., list[OptimizerInput]]:
    def func(device: Any = None, dtype: Any = None) -> list[OptimizerInput]:
        return [OptimizerInput(params=None, kwargs=deepcopy(kw), desc=desc) for desc, kw in configs]
    return func


#: Inputs for descent's own algorithms, in the style of torch's optim_inputs_func_*.
_OWN_INPUTS: dict[str, Callable[..., list[OptimizerInput]]] = {
    "Lion": _inputs(("default", {}), ("non-default lr", {"lr": 1e-3}), ("tensor lr", {"lr": torch.tensor(1e-3)}),
                    ("weight_decay", {"weight_decay": 0.1}), ("maximize", {"weight_decay": 0.1, "maximize": True}),
                    ("betas", {"betas": (0.95, 0.98)})),
    "LAMB": _inputs(("default", {}), ("non-default lr", {"lr": 1e-2}), ("weight_decay", {"weight_decay": 0.1}),
                    ("maximize", {"weight_decay": 0.1, "maximize": True}), ("clamp_value", {"clamp_value": 10.0}),
                    ("no bias_correction", {"bias_correction": False, "weight_decay": 0.01})),
    "SophiaG": _inputs(("default", {}), ("non-default lr", {"lr": 1e-3}), ("no weight_decay", {"weight_decay": 0.0}),
                       ("maximize", {"maximize": True}), ("rho, bs", {"rho": 0.1, "bs": 64})),
    "Shampoo": _inputs(("default", {}), ("update every step", {"update_freq": 1, "lr": 1e-2}),
                       ("no grafting", {"grafting": None, "update_freq": 1}),
                       ("small blocks", {"block_size": 4, "update_freq": 2}),
                       ("weight_decay", {"weight_decay": 0.1}), ("maximize", {"maximize": True})),
    "KFAC": _inputs(("default", {}), ("frequent updates", {"T_cov": 1, "T_inv": 2, "lr": 1e-2}),
                    ("no momentum", {"momentum": 0.0, "kl_clip": None}), ("weight_decay", {"weight_decay": 0.1})),
    # issue 15: explicit lrs (MARS's and SOAP's default lr is 0.003, the value the load hooks test writes);
    # Prodigy's lr is a multiplier of its estimated step (1.0)
    "MARS": _inputs(("lr", {"lr": 1e-3}), ("weight_decay", {"lr": 1e-2, "weight_decay": 0.1}),
                    ("maximize", {"lr": 1e-3, "maximize": True}), ("cautious", {"lr": 1e-2, "cautious": True})),
    "SOAP": _inputs(("lr", {"lr": 1e-2}), ("weight_decay", {"lr": 1e-2, "weight_decay": 0.1}),
                    ("refresh every step", {"lr": 1e-2, "precondition_frequency": 1}),
                    ("maximize", {"lr": 1e-2, "maximize": True})),
    "Prodigy": _inputs(("default", {"lr": 1.0}), ("d0", {"lr": 1.0, "d0": 1e-4}),
                       ("weight_decay", {"lr": 1.0, "weight_decay": 0.1}), ("maximize", {"lr": 1.0, "maximize": True}),
                       ("growth_rate", {"lr": 1.0, "growth_rate": 1.05})),
}


def _signature_inputs(cls: Callable[..., Any]) -> Callable[..., list[OptimizerInput]]:
    """Inputs for an optimizer nobody wrote inputs for: defaults, lr, weight decay, maximize."""
    params = inspect.signature(cls).parameters
    names = set(params)
    default_lr = params["lr"].default if "lr" in params else None
    big = isinstance(default_lr, (int, float)) and default_lr > 1e-2  # e.g. schedule-free's lr=1
    base = {"lr": 1e-3} if big else {}
    configs: list[tuple[str, dict[str, Any]]] = [("default", base)]
    if "lr" in names:
        configs.append(("non-default lr", {"lr": 1e-2}))
    if "weight_decay" in names:
        configs.append(("weight_decay", dict(base, weight_decay=0.1)))
    if "maximize" in names:
        configs.append(("maximize", dict(base, maximize=True)))
    return _inputs(*configs)


def _translated(func: Callable[..., list[OptimizerInput]], names: Mapping[str, str],
                extra: Iterable[tuple[str, dict[str, Any]]] = ()):
    def wrapped(device: Any = None, dtype: Any = None) -> list[OptimizerInput]:
        out = [OptimizerInput(params=None, kwargs=deepcopy(kw), desc=desc) for desc, kw in extra]
        for oi in func(device):
            kwargs = {names.get(k, k): v for k, v in oi.kwargs.items()}
            out.append(OptimizerInput(params=None, kwargs=kwargs, desc=oi.desc))
        return out
    return wrapped


def _translated_errors(func: Callable[..., list[ErrorOptimizerInput]], names: Mapping[str, str]):
    def wrapped(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
        out = []
        for e in func(device, dtype):
            oi = e.optimizer_error_input
            kwargs = {names.get(k, k): v for k, v in oi.kwargs.items()}
            out.append(ErrorOptimizerInput(OptimizerInput(params=oi.params, kwargs=kwargs, desc=oi.desc),
                                           error_on=e.error_on, error_type=e.error_type, error_regex=e.error_regex))
        return out
    return wrapped


def _kfac_on_params(params: Any, **kwargs: Any) -> descent.KFAC:
    """KFAC takes a model: hold the given tensors in a bare module (they get its SGD-momentum path)."""
    if isinstance(params, Tensor):
        raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts")
    module = nn.Module()
    module.layer = nn.Linear(1, 1)  # KFAC needs one layer it supports; it never gets a gradient here
    for i, p in enumerate(params):
        if isinstance(p, dict):
            raise TypeError("KFAC takes a model, not param groups")
        module._parameters[f"p{i}"] = p  # the caller's tensor itself, Parameter or not
    return descent.KFAC(module, **kwargs)


_kfac_on_params.__name__ = "KFAC"


def _adafactor_as_torch(params: Any, **kwargs: Any) -> Any:
    """descent.Adafactor with torch.optim.Adafactor's defaults (lr=1e-2, no relative step).

    descent's own default (``lr=None``, relative step) is the input ``"relative step"``.
    """
    if kwargs.get("lr", 1e-2) is None:
        kwargs.setdefault("relative_step", True)
    else:
        kwargs.setdefault("lr", 1e-2)
        kwargs.setdefault("relative_step", False)
    return descent.Adafactor(params, **kwargs)


_adafactor_as_torch.__name__ = "Adafactor"


def _muon_float32(params: Any, **kwargs: Any) -> Any:
    """descent.Muon with a float32 Newton-Schulz iteration unless asked otherwise.

    Only for the speed of these checks: torch 2.13's CPU bfloat16 ``X @ X.mT`` costs about
    57 ms whatever the size (5x10 included; ``X @ X.mT.contiguous()`` takes 7 us), so the
    default bf16 iteration makes a 10x5 step take ~0.3 s on this machine.
    """
    kwargs.setdefault("ns_dtype", torch.float32)
    return descent.Muon(params, **kwargs)


_muon_float32.__name__ = "Muon"


def _registry_class(name: str) -> Any:
    """The class the registry holds for ``name`` (presets resolve to their class)."""
    try:
        registry = importlib.import_module("descent.optim.registry")
    except ImportError:
        registry = None
    for where in (descent, registry):
        for attr in ("get_optimizer", "optimizer_info"):
            fn = getattr(where, attr, None)
            if fn is not None:
                found = fn(name)
                return found if isinstance(found, type) else found.cls
    exported = {n.lower(): n for n in dir(descent)}
    return getattr(descent, exported.get(name.lower(), name))


def optimizer_names() -> list[tuple[str, Any]]:
    """(name, class) of every descent optimizer class: the registry's, else the fallback list.

    Registry presets (e.g. ``"momentum"``: SGD with settings) resolve to a class already
    listed and are not repeated.
    """
    lister = getattr(descent, "list_optimizers", None)
    if lister is None:
        return [(n, getattr(descent, n)) for n in FALLBACK_NAMES]
    out: dict[Any, str] = {}
    for entry in lister():
        cls = _registry_class(entry)
        out.setdefault(cls, cls.__name__)
    return [(n, c) for c, n in out.items()]


def _probe_backends(make: Callable[..., Any], cls: Any) -> tuple[str, ...]:
    """Backends a class accepts and can run on a float32 CPU matrix (probed, not listed)."""
    if "backend" not in inspect.signature(cls).parameters:
        return ()
    found = []
    for backend in ("loop", "foreach", "fused"):
        p = nn.Parameter(torch.randn(4, 4))
        try:
            opt = make([p], backend=backend)
            p.grad = torch.randn(4, 4)
            opt.step()
        except (ValueError, RuntimeError):
            continue
        found.append(backend)
    return tuple(found)


def _accepts_differentiable(make: Callable[..., Any]) -> bool:
    """Whether ``differentiable=True`` is accepted (the generic checks then include it)."""
    try:
        make([torch.randn(2, 2, requires_grad=True)], differentiable=True)
    except (ValueError, RuntimeError, TypeError):
        return False
    return True


class DescentOptimInfo(OptimizerInfo):
    """torch's ``OptimizerInfo`` plus what descent's checks need.

    Attributes (beyond torch's):
        name: the public name (``descent.<name>``).
        make: ``make(params, **kwargs)`` builds the optimizer (KFAC: on a bare module).
        backends: descent backends the class runs (probed).
        torch_cls: torch.optim's class when its numbers must equal descent's, else None.
        takes_model: the constructor takes an ``nn.Module`` (KFAC).
    """

    def __init__(self, name: str, cls: Any) -> None:
        takes_model = name == "KFAC"
        make = _kfac_on_params if takes_model else _muon_float32 if name == "Muon" else cls
        params = inspect.signature(cls).parameters
        torch_info = {i.name: i for i in co.optim_db}.get(_TORCH.get(name, ""))
        if torch_info is not None:
            inputs = torch_info.optim_inputs_func
            if name == "Adafactor":
                make = _adafactor_as_torch
                inputs = _translated(inputs, _ADAFACTOR_NAMES,
                                     extra=[("relative step (descent's default)", {"lr": None, "relative_step": True})])
            error_inputs = torch_info.optim_error_inputs_func
            if name == "Adafactor":
                error_inputs = _translated_errors(error_inputs, _ADAFACTOR_NAMES)
        else:
            inputs = _OWN_INPUTS.get(name) or _signature_inputs(cls)
            error_inputs = None
        backends = _probe_backends(make, cls)
        impls = tuple(f for f in ("foreach", "fused", "differentiable") if f in params
                      and (f in backends or f == "differentiable" and _accepts_differentiable(make)))
        super().__init__(
            make,
            optim_inputs_func=inputs,
            optim_error_inputs_func=error_inputs,
            supported_impls=impls,
            supports_fused_on=("cpu",) if "fused" in backends else (),
            # SOAP/Prodigy refuse complex tensors; MARS clips by the whole tensor's norm (re/im not separable)
            supports_complex=name not in ("Adafactor", "Muon", "KFAC", "Shampoo", "SOAP", "Prodigy", "MARS"),
            step_requires_closure=name == "LBFGS",
            supports_param_groups=not takes_model and name != "LBFGS",  # torch's LBFGS: one group
            not_og_supported_flags=tuple(f for f in ("foreach", "fused", "differentiable", "maximize",
                                                      "capturable", "backend", "skip_nonfinite") if f in params),
        )
        self.name_ = name
        self.cls = cls
        self.make = make
        self.backends = backends
        self.torch_cls = getattr(torch.optim, name) if name in _SAME_MATH else None
        self.takes_model = takes_model

    @property
    def name(self) -> str:  # OptimizerInfo.name reads optim_cls.__name__
        return self.name_

    def __repr__(self) -> str:
        return self.name_


def all_inputs(info: DescentOptimInfo, skip: Iterable[str] = ()) -> list[OptimizerInput]:
    """torch's cliquey-flag expansion, plus one input per descent backend.

    ``skip`` takes torch's flags (``"foreach"``, ``"fused"``, ``"differentiable"``) and
    ``"backend"`` (no per-backend inputs).
    """
    skip = tuple(skip)
    torch_skip = tuple(s for s in skip if s in ("foreach", "fused", "differentiable"))
    out = _get_optim_inputs_including_global_cliquey_kwargs("cpu", torch.float32, info, skip=torch_skip)
    if "differentiable" in info.supported_impls and "differentiable" not in skip:
        if info.name not in TORCH_DIFFERENTIABLE:
            out = [oi for oi in out if not oi.kwargs.get("differentiable")]
    if "backend" in skip:
        return out
    for oi in info.optim_inputs_func("cpu"):
        for backend in info.backends:
            if backend == "fused" and "fused" in info.supported_impls:
                continue  # torch's expansion has fused=True already
            if backend == "foreach" and isinstance(oi.kwargs.get("lr"), Tensor):
                continue  # torch: a Tensor lr is refused with foreach (not capturable)
            kwargs = dict(deepcopy(oi.kwargs), backend=backend)
            out.append(OptimizerInput(params=None, kwargs=kwargs, desc=f"{oi.desc} & backend={backend}"))
    return out


def error_inputs(info: DescentOptimInfo) -> list[ErrorOptimizerInput]:
    """torch's errors for every optimizer, then torch's own for the matching torch optimizer."""
    out = co.get_error_inputs_for_all_optims("cpu", torch.float32)
    if info.optim_error_inputs_func is not None:
        out += info.optim_error_inputs_func("cpu", torch.float32)[len(out):]
    return out


def make_from_model(info: DescentOptimInfo, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer over a model: the model itself for KFAC, its parameters otherwise."""
    if info.takes_model:
        return info.cls(model, **kwargs)
    return info.make(model.parameters(), **kwargs)


def assert_same(a: Any, b: Any, path: str = "", **tol: float) -> None:
    """Nested equality of state dicts (tensors bit for bit unless ``atol``/``rtol`` are given)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        assert isinstance(a, Tensor) and isinstance(b, Tensor), f"{path}: {type(a)} vs {type(b)}"
        torch.testing.assert_close(a, b, rtol=tol.get("rtol", 0), atol=tol.get("atol", 0), equal_nan=True,
                                   msg=lambda m: f"{path}: {m}")
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]", **tol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]", **tol)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


INFOS: list[DescentOptimInfo] = [DescentOptimInfo(n, c) for n, c in optimizer_names()]
