"""Stochastic rounding and Kahan summation of bfloat16 weights, options of every elementwise optimizer.

:class:`RoundingMixin` goes before :class:`descent.optim.Optimizer` in a class's bases and adds
two group options (:class:`descent.lowbit.optim.LowBitMixin` builds on it and adds ``state_bits``):

* ``stochastic_rounding``: bfloat16 parameters are stepped in float32 and rounded
  stochastically back to bfloat16 (:func:`stochastic_round_`), so updates smaller
  than half a bf16 ulp (weight decay, small lr) survive in expectation.
* ``kahan_summation``: bfloat16 parameters keep a bfloat16 compensation buffer
  (state ``"kahan_comp"``, optimi's ``kahan_sum``): each step updates
  ``w = param + kahan_comp`` in float32, stores ``param = bf16(w)`` (round to nearest)
  and ``kahan_comp = bf16(w - param)``, so the part of an update a bf16 weight cannot
  hold is carried to the next step instead of lost: about 16 significant bits instead
  of 8, deterministic, for 2 more bytes per parameter. Exclusive with ``stochastic_rounding``.

The optimizer's own update runs unchanged on float32 copies of the bucket's parameters, gradients
and floating states (:func:`_in_float32`); the states go back rounded to nearest, the parameters as
the option says. State that holds weights itself (schedule-free's ``z``, named by the class's
``_weight_states``) is rounded like the parameters, with its own compensation ``<key>_kahan_comp``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["RoundingMixin", "stochastic_round_", "KAHAN_KEY"]

#: State key of the bf16 compensation buffer of ``kahan_summation``.
KAHAN_KEY = "kahan_comp"


def stochastic_round_(dst: Tensor, src: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 ``src`` to bfloat16 stochastically into ``dst`` (in place).

    Each value rounds up in magnitude with probability equal to the dropped fraction of
    a bf16 ulp (random low 16 bits added before truncation), so ``E[dst] = src``.
    Uses torch's global generator unless ``generator`` is given.

    Example:
        >>> x = torch.full((100_000,), 1.0 + 2**-10)  # 1/8 of a bf16 ulp above 1
        >>> y = stochastic_round_(torch.empty(100_000, dtype=torch.bfloat16), x)
        >>> abs(float(y.float().mean()) - (1 + 2**-10)) < 1e-4
        True
    """
    if dst.dtype != torch.bfloat16 or src.dtype != torch.float32:
        raise ValueError(f"Invalid dtypes: stochastic rounding is float32 -> bfloat16, got {src.dtype} -> {dst.dtype}")
    bits = src.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = torch.where(torch.isfinite(src), bits + noise, bits)
    dst.copy_(torch.bitwise_right_shift(rounded, 16).to(torch.int16).view(torch.bfloat16).view(dst.shape))
    return dst


def comp_key(key: str | None = None) -> str:
    """The state key of the Kahan compensation of the parameter (``None``) or of weight state ``key``."""
    return KAHAN_KEY if key is None else f"{key}_{KAHAN_KEY}"


def _rounding(group: Mapping[str, Any], p: Tensor) -> str:
    """How float32 results are written back to ``p``: "stochastic", "kahan" or "nearest"."""
    if p.dtype != torch.bfloat16:
        return "nearest"
    return "stochastic" if group.get("stochastic_rounding") else "kahan" if group.get("kahan_summation") else "nearest"


def _master(p: Tensor, state: dict[str, Any], rounding: str, comp: str = KAHAN_KEY) -> Tensor:
    """The float32 weight a bf16 step starts from: ``p + state[comp]`` under Kahan summation."""
    w = p.detach().float()
    return w.add_(state[comp].float()) if rounding == "kahan" and comp in state else w


def _write_param(p: Tensor, value: Tensor, state: dict[str, Any], rounding: str, comp: str = KAHAN_KEY) -> None:
    """Write float32 ``value`` into bf16 ``p`` as ``rounding`` says (Kahan: the remainder into ``state[comp]``)."""
    if value.data_ptr() == p.data_ptr() and value.dtype == p.dtype:
        return
    value = value.view(p.shape)
    if rounding == "stochastic":
        stochastic_round_(p, value)
    elif rounding == "kahan":
        p.copy_(value)
        rest = value - p.float()  # exact in float32: what bf16 could not hold
        if comp in state:
            state[comp].copy_(rest)
        else:
            state[comp] = rest.to(p.dtype)
    else:
        p.copy_(value)


def _is_comp(key: str) -> bool:
    return key.endswith(KAHAN_KEY)


def _in_float32(update: Callable[..., None], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], rounding: str, weights: Iterable[str] = ()) -> None:
    """Run ``update`` on float32 copies of bf16 params/grads/states; params (and the states named in
    ``weights``) come back rounded as ``rounding`` says, the other states rounded to nearest."""
    weights = frozenset(weights)

    def weight(k: str, v: Any) -> bool:
        return k in weights and isinstance(v, Tensor) and v.dtype == torch.bfloat16

    p32 = [_master(p, s, rounding) for p, s in zip(params, states)]
    g32 = [g.float() for g in grads]
    s32 = [{k: _master(v, s, rounding, comp_key(k)) if weight(k, v)
            else v.float() if isinstance(v, Tensor) and v.is_floating_point() and k != "step" else v
            for k, v in s.items() if not _is_comp(k)} for s in states]
    update(p32, g32, s32)
    for p, w, s, t in zip(params, p32, states, s32):
        _write_param(p, w, s, rounding)
        for k, v in t.items():
            if weight(k, s.get(k)):
                _write_param(s[k], v, s, rounding, comp_key(k))
            elif k == "step" or not isinstance(v, Tensor):
                s[k] = v
            elif k in s and isinstance(s[k], Tensor) and s[k] is not v:
                s[k].copy_(v)
            else:
                s[k] = v.to(p.dtype)


def check_rounding(group: Mapping[str, Any]) -> None:
    """Validate ``stochastic_rounding`` and ``kahan_summation``; ``ValueError`` naming the bad value."""
    for name in ("stochastic_rounding", "kahan_summation"):
        if not isinstance(group.get(name, False), bool):
            raise ValueError(f"Invalid {name}: {group[name]!r} (must be True or False)")
    if group.get("stochastic_rounding") and group.get("kahan_summation"):
        raise ValueError("Invalid kahan_summation=True with stochastic_rounding=True: choose one way to round bf16 weights")


class RoundingMixin:
    """Adds ``stochastic_rounding`` and ``kahan_summation`` to an elementwise optimizer (see the module docstring).

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        >>> opt = descent.Adagrad([w], lr=1e-4, kahan_summation=True)
        >>> w.grad = torch.ones_like(w); _ = opt.step()
        >>> w.detach().float().tolist(), opt.state[w]["kahan_comp"].dtype  # 1 - 1e-4: the 1e-4 is in kahan_comp
        ([1.0, 1.0, 1.0, 1.0], torch.bfloat16)
    """

    #: State keys that hold weights themselves (schedule-free's ``z``): rounded like the parameters.
    _weight_states: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        defaults.setdefault("stochastic_rounding", False)
        defaults.setdefault("kahan_summation", False)
        super().__init__(params, defaults)  # type: ignore[call-arg]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        group = self.param_groups[-1]  # type: ignore[attr-defined]
        try:
            self._check_options(group)
        except ValueError:
            self.param_groups.pop()  # type: ignore[attr-defined]
            raise

    def _check_options(self, group: dict[str, Any]) -> None:
        """The rounding options; ``state_bits`` only where the class keeps low-bit state (LowBitMixin)."""
        if group.get("state_bits", 32) != 32:
            raise ValueError(f"Invalid state_bits: {group['state_bits']!r} ({type(self).__name__} has no "
                             "low-bit state; use 32)")
        check_rounding(group)

    def _takes_grad_scale(self, group: dict[str, Any]) -> bool:
        """Without stochastic rounding or Kahan summation the plain declaration path takes GradScaler's scale."""
        return not group.get("stochastic_rounding") and not group.get("kahan_summation")

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], overrides: Mapping[str, Any] | None = None) -> None:
        base = super()._update  # type: ignore[misc]
        rounding = _rounding(group, params[0])
        if rounding == "nearest":
            base(backend, group, params, grads, states, overrides)
            return
        b32 = self._backend_for(group, params[0].device)
        _in_float32(lambda p, g, s: base(b32, group, p, g, s, overrides), params, grads, states, rounding,
                    self._weight_states)

    def _backend_for(self, group: dict[str, Any], device: torch.device) -> str:
        """The backend a float32 copy of a bf16 bucket runs (the group's request, for float32)."""
        from ..optim._backend import resolve_request, select_backend

        requested = resolve_request(group.get("backend"), group.get("foreach"), group.get("fused"))
        excluded = ("foreach",) if group.get("foreach") is False else ()
        return select_backend(requested, self._supported, device, torch.float32,  # type: ignore[attr-defined]
                              owner=type(self).__name__, excluded=excluded)
