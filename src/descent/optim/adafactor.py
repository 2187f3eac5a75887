"""``descent.Adafactor``: sublinear-memory adaptive steps (Shazeer & Stern, 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ..kernels import triton as KT
from ._backend import floating
from ._validate import check_nonneg, check_unit_interval, as_float
from ..lowbit.rounding import RoundingMixin
from ._base import Optimizer, step_tensor
from ._spec import Declaration, Kernel, Meta, zeros


def _adafactor(param: Tensor, grad: Tensor, row_var: Tensor | None, col_var: Tensor | None,
               variance: Tensor | None, exp_avg: Tensor | None, *, step: int, lr: float | None, relative_step: bool,
               warmup_init: bool, **hp: Any) -> None:
    """:func:`descent.functional.adafactor` with the step size :math:`\\rho_t` of this step."""
    F.adafactor(param, grad, row_var, col_var, variance, exp_avg, step=step,
                lr=F.adafactor_lr(step, lr, relative_step=relative_step, warmup_init=warmup_init), **hp)


class Adafactor(RoundingMixin, Optimizer):
    r"""Adafactor: factored second moments, relative step size and update clipping.

    For a parameter with two or more dimensions the second moment of the last two is
    kept as a row and a column mean (``row_var`` ``[..., n, 1]``, ``col_var``
    ``[..., 1, m]``) and reconstructed as :math:`\hat V = RC/\mathrm{mean}(R)`; vectors
    keep a full ``variance``. The update :math:`U = g/\sqrt{\hat V}` is divided by
    :math:`\max(1, \mathrm{RMS}(U)/d)` and scaled by
    :math:`\alpha_t = \rho_t\max(\epsilon_2, \mathrm{RMS}(\theta))`, with
    :math:`\rho_t = \min(10^{-2}, 1/\sqrt t)` (``min(1e-6 t, 1/sqrt t)`` with
    ``warmup_init``) when ``relative_step``, else ``lr``. :math:`\hat\beta_{2t} = 1-t^{c}`
    with :math:`c` = ``decay_rate``. ``beta1`` adds a momentum (``exp_avg``) of the
    scaled update; ``weight_decay`` multiplies :math:`\theta` by :math:`1-\lambda\alpha_t`.
    The full formula is in :func:`descent.functional.adafactor`.

    The signature is the paper's (as in fairseq and HF transformers). With an explicit
    ``lr`` and ``relative_step=False`` this is a fixed-lr optimizer (still scaled by
    :math:`\mathrm{RMS}(\theta)` unless ``scale_parameter=False``).

    **Against torch.optim.Adafactor.** It equals torch's (to float64 rounding) when
    ``relative_step=True``, ``scale_parameter=True``, ``beta1=None`` and
    ``weight_decay=0`` against ``torch.optim.Adafactor(lr=1e-2, eps=(eps1, eps2),
    beta2_decay=decay_rate, d=clip_threshold)``, for gradients with
    :math:`g^2 \gg \epsilon_1` (tested). By design it differs where torch departs from the
    paper: torch adds no :math:`\epsilon_1` to :math:`g^2` but clamps :math:`\hat V`
    afterwards; torch caps :math:`\rho_t` by ``lr`` instead of ``1e-2``; torch has no
    momentum, no ``warmup_init``, no unscaled step, and decays weights by the constant
    ``lr * weight_decay`` rather than :math:`\alpha_t\lambda`. State keys are torch's
    (``step``, ``row_var``, ``col_var``, ``variance``), so torch's state loads here.

    The default CPU backend (``"fused"``) is one Numba call per device/dtype bucket
    (:func:`descent.kernels.adafactor.adafactor_multi`: one parallel region; each
    thread makes three passes over a factored tensor's gradient, two over a vector's, one
    tensor at a time, so the later passes read from cache) that
    agrees with the functional to float rounding.

    Args:
        params: parameters or param group dicts.
        lr: external step size, or None (needs ``relative_step``).
        eps: :math:`(\epsilon_1, \epsilon_2)` (default (1e-30, 1e-3)).
        clip_threshold: :math:`d` (default 1.0).
        decay_rate: :math:`c` (default -0.8).
        beta1: momentum coefficient, or None for none (default).
        weight_decay: :math:`\lambda` (default 0).
        scale_parameter: scale the step by :math:`\max(\epsilon_2, \mathrm{RMS}(\theta))`.
        relative_step: use :math:`\rho_t` instead of ``lr``.
        warmup_init: linear warmup of :math:`\rho_t` (needs ``relative_step``).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).
        capturable: step counters and a tensor ``lr`` stay on the device and the step makes no
            host sync (the Triton kernel, on CUDA), so ``torch.cuda.graph`` can capture it
            (:mod:`descent.optim._run`).

    References:
        Shazeer & Stern (2018), "Adafactor: Adaptive Learning Rates with Sublinear
        Memory Cost", Algorithms 4-5.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(8, 4)
        >>> opt = descent.Adafactor(model.parameters())       # relative step, no lr
        >>> model(torch.randn(16, 8)).pow(2).mean().backward(); _ = opt.step()
        >>> sorted(opt.state[model.weight])
        ['col_var', 'row_var', 'step']
    """

    declaration = Declaration(
        functional=_adafactor,
        hyper=lambda g: dict(lr=g["lr"], relative_step=g["relative_step"], warmup_init=g["warmup_init"],
                             decay_rate=float(g["decay_rate"]), eps1=float(g["eps"][0]), eps2=float(g["eps"][1]),
                             clip_threshold=float(g["clip_threshold"]), beta1=g["beta1"],
                             weight_decay=float(g["weight_decay"]), scale_parameter=g["scale_parameter"],
                             maximize=g["maximize"]),
        columns=("row_var", "col_var", "variance", "exp_avg"),
        state={"row_var": lambda p, g: p.new_zeros(p.shape[:-1] + (1,)),
               "col_var": lambda p, g: p.new_zeros(p.shape[:-2] + (1, p.shape[-1])),
               "variance": zeros, "exp_avg": zeros},
        optional={"exp_avg": lambda g: g["beta1"] is not None},
        steps=True,
        kernels={"fused": (Kernel("descent.kernels.launch:adafactor", K.numba_cpu),
                           Kernel("descent.kernels.triton:adafactor", KT.supports, capturable=True)),
                 "foreach": Kernel("descent.kernels.foreach:adafactor", floating)},
        meta=Meta("adafactor", adaptive=True, state_bytes=0.03, paper="Shazeer & Stern (2018), arXiv:1804.04235",
                  lr={"classification": 1e-2, "language": 1e-2, "convex": 0.01, "function": 0.05}),
    )

    def __init__(
        self,
        params: Any,
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool = True,
        warmup_init: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        capturable: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate, beta1=beta1,
                        weight_decay=weight_decay, scale_parameter=scale_parameter, relative_step=relative_step,
                        warmup_init=warmup_init, maximize=maximize, foreach=foreach, fused=fused,
                        backend=backend, skip_nonfinite=skip_nonfinite, capturable=capturable,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        if lr is not None:
            check_nonneg("lr", lr)
            if group["relative_step"]:
                raise ValueError(f"Invalid lr: {lr} with relative_step=True (pass relative_step=False to use it)")
        elif not group["relative_step"]:
            raise ValueError("Invalid lr: None with relative_step=False (an explicit lr is needed)")
        if group["warmup_init"] and not group["relative_step"]:
            raise ValueError("Invalid warmup_init=True with relative_step=False")
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r} (must be a pair (eps1, eps2))")
        check_nonneg("eps1", eps[0])
        check_nonneg("eps2", eps[1])
        check_nonneg("clip_threshold", group["clip_threshold"])
        if as_float("clip_threshold", group["clip_threshold"]) == 0:
            raise ValueError("Invalid clip_threshold: 0.0 (must be > 0)")
        if not as_float("decay_rate", group["decay_rate"]) < 0:
            raise ValueError(f"Invalid decay_rate: {group['decay_rate']} (must be < 0)")
        if group["beta1"] is not None:
            check_unit_interval("beta1", group["beta1"])
        check_nonneg("weight_decay", group["weight_decay"])

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if p.is_complex():
            raise ValueError("Invalid params: Adafactor does not support complex parameters (its factoring "
                             "would mix real and imaginary parts)")
        state: dict[str, Any] = {"step": step_tensor(p)}
        if p.dim() > 1:
            state["row_var"] = p.new_zeros(p.shape[:-1] + (1,))
            state["col_var"] = p.new_zeros(p.shape[:-2] + (1, p.shape[-1]))
        else:
            state["variance"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["beta1"] is not None:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
