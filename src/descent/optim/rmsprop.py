"""``descent.RMSprop``: a drop-in for ``torch.optim.RMSprop``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ..kernels import triton as KT
from ._validate import check_nonneg
from ._backend import floating
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin
from ._spec import Declaration, Kernel, Meta, scalar, zeros


class RMSprop(RoundingMixin, Optimizer):
    r"""RMSprop with optional centering and momentum.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\qquad
        \theta_{t+1} = \theta_t - \eta\, g_t / (\sqrt{v_t - \bar g_t^2\,[\text{centered}]} + \epsilon)

    (with momentum, the scaled gradient feeds a buffer :math:`b_t = \mu b_{t-1} + g_t/d_t`).
    Arguments, defaults and state keys (``step``, ``square_avg``, ``grad_avg``,
    ``momentum_buffer``) are torch's. torch has no fused RMSprop kernel; descent's
    default on CPU (``"fused"``) is one single-pass Numba call over the bucket, in torch's
    operation order (equal to the loop to float64 rounding; the loop is the fallback for
    other dtypes and without Numba).

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-2).
        alpha: smoothing constant :math:`\alpha` (default 0.99).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: coupled L2 (default 0).
        momentum: :math:`\mu` (default 0).
        centered: normalise by the estimated variance instead of the raw second moment.
        foreach, maximize, backend, skip_nonfinite: see :class:`descent.SGD`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).
        capturable: step counters and tensor hyperparameters (``lr``, ``weight_decay``...) stay
            on the device and the step makes no host sync (the Triton kernel, on CUDA), so
            ``torch.cuda.graph`` can capture it (:mod:`descent.optim._run`).

    References:
        Tieleman & Hinton (2012), Lecture 6.5; Graves (2013), "Generating Sequences
        With Recurrent Neural Networks" (centered form).

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = descent.RMSprop([w], lr=0.01, alpha=0.9)
        >>> w.sum().backward(); _ = opt.step()
    """

    declaration = Declaration(
        functional=F.rmsprop,
        hyper=lambda g: dict(lr=scalar(g, g["lr"]), alpha=g["alpha"], eps=g["eps"], weight_decay=g["weight_decay"],
                             momentum=g["momentum"], centered=g["centered"], maximize=g["maximize"]),
        columns=("square_avg", "grad_avg", "momentum_buffer"),
        state={"square_avg": zeros, "momentum_buffer": zeros, "grad_avg": zeros},
        optional={"momentum_buffer": lambda g: g["momentum"] > 0, "grad_avg": lambda g: bool(g["centered"])},
        steps=True,
        step_arg=False,
        kernels={"fused": (Kernel("descent.kernels.launch:rmsprop", K.numba_cpu, steps=None),
                           Kernel("descent.kernels.triton:rmsprop", KT.supports, steps=None, capturable=True)),
                 "foreach": Kernel("descent.kernels.launch:rmsprop_foreach", floating, steps="tensor")},
        meta=Meta("rmsprop", adaptive=True, state_bytes=4.0, paper="Tieleman & Hinton (2012), Lecture 6.5",
                  lr={"classification": 1e-3, "language": 1e-3, "convex": 0.01, "function": 0.01}),
    )

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, foreach=foreach, maximize=maximize, backend=backend,
                        differentiable=differentiable, capturable=capturable, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        for name in ("lr", "eps", "weight_decay", "momentum"):
            check_nonneg(name, group[name])
        check_nonneg("alpha", group["alpha"])
        if group["alpha"] > 1:
            raise ValueError(f"Invalid alpha: {group['alpha']} (must be in [0, 1])")
