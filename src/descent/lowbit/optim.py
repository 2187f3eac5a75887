"""Low-bit states, stochastic rounding and Kahan summation as options of descent's elementwise optimizers.

:class:`LowBitMixin` goes before :class:`descent.optim.Optimizer` in a class's bases and
adds three group options:

* ``state_bits`` (32, 8 or 4): the states of parameters with at least
  :data:`descent.lowbit.MIN_NUMEL` elements are stored quantized. A quantized state
  keeps torch's key for its codes and adds two plain tensors beside it, e.g. AdamW's
  ``exp_avg`` (uint8 codes), ``exp_avg_absmax`` (float32, one per block) and
  ``exp_avg_qmap`` (the code map, one tensor shared by all parameters); see
  :class:`descent.lowbit.QuantState`. Smaller parameters keep full-precision state.
  Changing ``state_bits`` mid-run applies to state created afterwards.
* ``stochastic_rounding`` and ``kahan_summation``: how bfloat16 parameters are rounded
  (:mod:`descent.lowbit.rounding`, which every elementwise optimizer inherits).

On CPU float32/float64 the quantized step is one Numba kernel call per bucket
(:mod:`descent.kernels.lowbit`), on CUDA (float32, bf16, fp16 rounded to nearest) one Triton
launch per bucket (:mod:`descent.kernels.triton._lowbit`, the same codes bit for bit); elsewhere
(bf16 on CPU, stochastic rounding, Kahan summation, strided tensors, DTensors) the reference path
dequantizes, runs :mod:`descent.functional` in float32 and quantizes again, tensor by tensor.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from . import MIN_NUMEL
from .maps import code_map
from .quant import quantize
from .rounding import KAHAN_KEY, RoundingMixin, check_rounding, stochastic_round_
from .rounding import _in_float32, _master, _rounding, _write_param  # noqa: F401 - distributed/_lowbit.py reads them here
from .state import QuantState, codes_shape

__all__ = ["LowBitMixin", "stochastic_round_", "STATE_BITS", "KAHAN_KEY"]

#: Accepted values of ``state_bits``.
STATE_BITS = (32, 8, 4)
# --------------------------------------------------------------------------------- algorithms
@dataclass(frozen=True)
class _Algo:
    """How one functional's states are quantized and stepped."""

    keys: Mapping[str, bool]  # state key -> signed map
    launcher: str
    step: Callable[..., Any]  # reference: (param, grad, values, hp, step) -> new lazy value or None
    lazy: bool = False  # the state appears on the first step (SGD's momentum_buffer)


def _adam(p: Tensor, g: Tensor, vals: list[Tensor | None], hp: dict[str, Any], step: int | None) -> None:
    F.adam(p, g, vals[0], vals[1], None, step=step, **hp)


def _lion(p: Tensor, g: Tensor, vals: list[Tensor | None], hp: dict[str, Any], step: int | None) -> None:
    F.lion(p, g, vals[0], **hp)


def _sgd(p: Tensor, g: Tensor, vals: list[Tensor | None], hp: dict[str, Any], step: int | None) -> Tensor | None:
    return F.sgd(p, g, vals[0], **hp)


_ALGOS = {
    F.adam: _Algo({"exp_avg": True, "exp_avg_sq": False}, "adam_lowbit", _adam),
    F.lion: _Algo({"exp_avg": True}, "lion_lowbit", _lion),
    F.sgd: _Algo({"momentum_buffer": True}, "sgd_lowbit", _sgd, lazy=True),
}


def _eligible(p: Tensor, group: Mapping[str, Any]) -> bool:
    """Whether ``p`` gets a quantized state: floating, with at least the group's ``min_8bit_size`` elements
    (:data:`MIN_NUMEL`, 4096, when it is ``None`` or absent)."""
    limit = group.get("min_8bit_size")
    return p.dtype.is_floating_point and p.numel() >= (MIN_NUMEL if limit is None else limit)


def _quantized(state: Mapping[str, Any], key: str) -> bool:
    return key + "_absmax" in state


def _kernel_ok(p: Tensor, g: Tensor) -> bool:
    from .. import kernels as K

    return (K.AVAILABLE and p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
            and g.dtype == p.dtype and p.is_contiguous() and g.is_contiguous()
            and type(p.data) is torch.Tensor and type(g) is torch.Tensor)  # a DTensor's data_ptr() is not its data


def _triton_ok(p: Tensor, g: Tensor, rounding: str) -> bool:
    """Whether the Triton low-bit kernels take ``p`` (CUDA, or CPU under Triton's interpreter; fp32/bf16/fp16
    rounded to nearest)."""
    from ..kernels import triton as KT

    return (rounding == "nearest" and KT.supports(p.device, p.dtype) and g.dtype == p.dtype and g.device == p.device
            and g.layout == torch.strided and p.is_contiguous() and g.is_contiguous()
            and type(p.data) is torch.Tensor and type(g) is torch.Tensor)


def _route(group: Mapping[str, Any], p: Tensor, g: Tensor) -> str:
    """Which path steps a quantized ``p``: "numba" (CPU float32/float64), "triton" (GPU) or "reference"."""
    if _kernel_ok(p, g):
        return "numba"
    return "triton" if _triton_ok(p, g, _rounding(group, p)) else "reference"


def _reference(algo: _Algo, p: Tensor, g: Tensor, state: dict[str, Any], hp: dict[str, Any], step: int | None,
               bits: int, rounding: str) -> None:
    """Dequantize, run the functional in float32 (float64 for float64 params), quantize."""
    dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
    g = g.to_dense() if g.is_sparse else g  # SGD takes sparse gradients; the quantized state is dense anyway
    work = _master(p, state, rounding).reshape(-1) if p.dtype == torch.bfloat16 else p.detach().reshape(-1).to(dtype)
    present = [k for k in algo.keys if _quantized(state, k)]
    vals = [QuantState.from_entries(state, k, p.numel()).dequantize(dtype) if k in present else None
            for k in algo.keys]
    out = algo.step(work, g.reshape(-1).to(dtype), vals, hp, step)
    if algo.lazy and out is not None:
        vals = [out]
    _write_param(p, work, state, rounding)
    for (key, signed), value in zip(algo.keys.items(), vals):
        if value is None:
            continue
        if key in present:  # keep the state's own map (a state saved with another map stays in it)
            new = QuantState(*quantize(value, state[key + "_qmap"], bits, step=step or 0), state[key + "_qmap"],
                             value.numel())
        else:
            new = QuantState.quantize(value, signed, bits, step or 0)
        if key in present:
            state[key].view(-1).copy_(new.codes)
            state[key + "_absmax"].copy_(new.absmax)
        else:
            state.update(new.entries(key, codes_shape(p.shape, bits)))


def _launch(algo: _Algo, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
            hp: dict[str, Any], steps: list[int] | None, first: bool, route: str = "numba") -> None:
    """One kernel call on the bucket: Numba's launcher, or the Triton one of the same name."""
    if route == "triton":
        from ..kernels import triton as KL
    else:
        from ..kernels import lowbit as KL

    cols = {}
    for key in algo.keys:
        for suffix in ("", "_absmax", "_qmap"):
            cols[key + suffix] = [s[key + suffix] for s in states]
    extra: dict[str, Any] = {"steps": steps} if steps is not None else {}
    if algo.lazy:
        extra["first"] = first
    getattr(KL, algo.launcher)(params, grads, **cols, **extra, **hp)


def step_quantized(algo: _Algo, group: Mapping[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Any]], hp: dict[str, Any], with_steps: bool) -> list[int]:
    """Step the parameters whose state is (or becomes) quantized; return the other positions."""
    bits_wanted = int(group.get("state_bits", 32))
    key0 = next(iter(algo.keys))
    absmax = key0 + "_absmax"
    if bits_wanted == 32 and not any(absmax in s for s in states):  # the 32-bit step: ~10 us, not ~200
        return list(range(len(params)))
    mine: dict[tuple[int, bool, str, tuple[int, ...]], list[int]] = {}
    rest = []
    for i, (p, s) in enumerate(zip(params, states)):
        maps: tuple[int, ...] = ()
        if _quantized(s, key0):
            bits = 8 if s[key0 + "_qmap"].numel() == 256 else 4
            first = False
            maps = tuple(s[k + "_qmap"].data_ptr() for k in algo.keys)  # a kernel call takes one map per key
        elif algo.lazy and key0 not in s and bits_wanted < 32 and _eligible(p, group) and hp.get("momentum", 0) != 0:
            bits, first = bits_wanted, True
        else:
            rest.append(i)
            continue
        mine.setdefault((bits, first, _route(group, p, grads[i]), maps), []).append(i)
    for (bits, first, route, _), idx in mine.items():
        steps = None
        if counts_steps(with_steps, bits):
            from ..optim._run import advance_steps

            for i in idx:  # a 4-bit Lion/SGD state saved before it counted steps starts counting now
                states[i].setdefault("step", torch.zeros((), dtype=torch.float32, device=params[i].device))
            steps = advance_steps([states[i]["step"] for i in idx])
        if route != "reference":
            if first:
                for i in idx:
                    zero = QuantState.zeros(params[i].numel(), True, bits, params[i].device)
                    states[i].update(zero.entries(key0, codes_shape(params[i].shape, bits)))
            _launch(algo, [params[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx], hp, steps,
                    first, route)
        else:
            for j, i in enumerate(idx):
                _reference(algo, params[i], grads[i], states[i], hp, None if steps is None else steps[j], bits,
                           _rounding(group, params[i]))
    return rest


def counts_steps(with_steps: bool, bits: int) -> bool:
    """Whether a quantized state keeps a ``step`` counter: its optimizer counts steps, or its codes are 4-bit
    (a 4-bit first moment's rounding thresholds take the step number, :func:`descent.lowbit.quant.dither`,
    so Lion's and SGD's 4-bit states count steps too)."""
    return with_steps or bits == 4


def init_quantized(algo: _Algo, p: Tensor, bits: int, with_steps: bool) -> dict[str, Any]:
    """The zero state of a quantized parameter (only the step counter, if any, for a lazy state)."""
    state: dict[str, Any] = ({"step": torch.zeros((), dtype=torch.float32, device=p.device)}
                             if counts_steps(with_steps, bits) else {})
    if not algo.lazy:
        for key, signed in algo.keys.items():
            state.update(QuantState.zeros(p.numel(), signed, bits, p.device).entries(key, codes_shape(p.shape, bits)))
    return state


class LowBitMixin(RoundingMixin):
    """Adds ``state_bits`` to an elementwise optimizer with a low-bit algorithm (see the module docstring),
    on top of :class:`~descent.lowbit.rounding.RoundingMixin`'s ``stochastic_rounding`` and ``kahan_summation``.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(128, 64)
        >>> opt = descent.AdamW(model.parameters(), lr=1e-3, state_bits=8)
        >>> model(torch.randn(4, 128)).sum().backward(); _ = opt.step()
        >>> opt.state[model.weight]["exp_avg"].dtype, opt.state[model.bias]["exp_avg"].dtype
        (torch.uint8, torch.float32)
        >>> bf16 = torch.nn.Linear(4, 2).to(torch.bfloat16)
        >>> opt = descent.AdamW(bf16.parameters(), lr=1e-3, kahan_summation=True)
        >>> bf16(torch.ones(1, 4, dtype=torch.bfloat16)).sum().backward(); _ = opt.step()
        >>> opt.state[bf16.weight]["kahan_comp"].dtype
        torch.bfloat16
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        defaults.setdefault("state_bits", 32)
        super().__init__(params, defaults)

    def _check_options(self, group: dict[str, Any]) -> None:
        _check(type(self).__name__, group)
        check_rounding(group)

    def _algo(self) -> _Algo | None:
        return _ALGOS.get(self.declaration.functional)  # type: ignore[attr-defined]

    def _takes_grad_scale(self, group: dict[str, Any]) -> bool:
        """32-bit state without stochastic rounding or Kahan summation is the plain declaration path
        (GradScaler's scale goes into torch's fused kernel)."""
        return int(group.get("state_bits", 32)) == 32 and super()._takes_grad_scale(group)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        algo, bits = self._algo(), int(group.get("state_bits", 32))
        if algo is not None and bits < 32 and _eligible(p, group):
            return init_quantized(algo, p, bits, self.declaration.steps)  # type: ignore[attr-defined]
        return super()._init_state(p, group)  # type: ignore[misc]

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], overrides: Mapping[str, Any] | None = None) -> None:
        algo = self._algo()
        rest = list(range(len(params)))
        if algo is not None:
            hp = self.declaration.hyper(group)  # type: ignore[attr-defined]
            if overrides:
                hp.update((k, v) for k, v in overrides.items() if v is not None)
            rest = step_quantized(algo, group, params, grads, states, hp, self.declaration.steps)  # type: ignore
        if not rest:
            return
        ps, gs, ss = [params[i] for i in rest], [grads[i] for i in rest], [states[i] for i in rest]
        super()._update(backend, group, ps, gs, ss, overrides)  # RoundingMixin's: bf16 rounding options

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, except that quantized entries keep their dtypes.

        torch casts every floating state tensor to its parameter's dtype (and would turn
        uint8 codes into floats); the codes, absmax and maps are set aside, the rest is
        loaded by torch, and they are put back, moved to the parameter's device.
        """
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]  # type: ignore[attr-defined]
        by_id = dict(zip(saved_ids, params))
        kept: dict[Any, dict[str, Tensor]] = {}
        plain: dict[Any, Any] = {}
        for pid, st in state_dict["state"].items():
            keys = [k for k in st if isinstance(st, dict) and k + "_absmax" in st]
            quant = {k + sfx: st[k + sfx] for k in keys for sfx in ("", "_absmax", "_qmap") if k + sfx in st}
            if quant:
                kept[pid] = quant
            plain[pid] = {k: v for k, v in st.items() if k not in quant} if quant else st
        super().load_state_dict({**state_dict, "state": plain})  # type: ignore[misc]
        for pid, quant in kept.items():
            p = by_id[pid]
            for k, v in quant.items():
                if k.endswith("_qmap"):
                    shared = code_map(bool(v.min() < 0), 8 if v.numel() == 256 else 4, p.device)
                    v = shared if torch.equal(v.to(shared.device), shared) else v.to(p.device)
                else:
                    v = _param_shaped(k, v.to(p.device, copy=True), p, quant)
                self.state[p][k] = v  # type: ignore[attr-defined]


def _param_shaped(key: str, v: Tensor, p: Tensor, quant: Mapping[str, Tensor]) -> Tensor:
    """Codes saved flat (before codes took :func:`codes_shape`) viewed in the parameter's codes shape."""
    qmap = quant.get(key + "_qmap")
    if key.endswith("_absmax") or qmap is None or type(v) is not torch.Tensor or v.dim() != 1:
        return v
    shape = codes_shape(p.shape, 8 if qmap.numel() == 256 else 4)
    return v.view(shape) if v.numel() == math.prod(shape) else v


def _check(owner: str, group: Mapping[str, Any]) -> None:
    """Validate ``state_bits`` (an int of :data:`STATE_BITS`; not a float nor a bool) and what it excludes."""
    bits = group.get("state_bits", 32)
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in STATE_BITS:
        raise ValueError(f"Invalid state_bits: {bits!r} (must be one of the ints {STATE_BITS})")
    if bits < 32 and group.get("cautious"):
        raise ValueError(f"Invalid cautious=True with state_bits={bits}: {owner}'s low-bit kernels do not mask")
    if bits < 32 and group.get("amsgrad"):
        raise ValueError(f"Invalid amsgrad=True with state_bits={bits}: {owner} keeps AMSGrad's maximum only in 32 bits")
    limit = group.get("min_8bit_size")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0):
        raise ValueError(f"Invalid min_8bit_size: {limit!r} (must be an int >= 0, or None for {MIN_NUMEL})")
