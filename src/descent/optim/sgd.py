"""``descent.SGD``: a drop-in for ``torch.optim.SGD`` on descent's step loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ._validate import check_nonneg
from ._backend import floating, torch_fused_sgd
from ._base import Optimizer
from ._spec import Declaration, Kernel, Meta, cautious_flag, scalar
from ..lowbit.optim import LowBitMixin


class SGD(LowBitMixin, Optimizer):
    r"""Stochastic gradient descent with momentum, Nesterov and coupled weight decay.

    .. math::
        g_t = \nabla L(\theta_t) + \lambda\theta_t, \quad
        b_t = \mu b_{t-1} + (1-\tau) g_t \ (b_1 = g_1), \quad
        \theta_{t+1} = \theta_t - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Same arguments, defaults and state (``momentum_buffer``) as ``torch.optim.SGD``, so
    state_dicts move both ways. The default CPU path is torch's fused kernel; unlike
    ``torch.optim.SGD(fused=True)``, a parameter that receives its first gradient
    after the others already have momentum buffers is initialised correctly.

    Args:
        params: parameters or param group dicts.
        lr: learning rate :math:`\eta` (default 1e-3, as torch).
        momentum: :math:`\mu` (default 0).
        dampening: :math:`\tau` (default 0).
        weight_decay: coupled L2 :math:`\lambda` (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective.
        foreach, fused, backend: how the step runs (see :mod:`descent.optim._backend`).
        skip_nonfinite: skip the whole step when any gradient is NaN/Inf and count it
            in ``param_groups[i]["skipped_steps"]``.
        cautious: cautious masking (Liang et al. 2024, :func:`descent.functional.cautious`):
            zero the update's coordinates whose sign disagrees with the gradient and rescale
            the rest; a cautious group runs the functional (no kernel masks).
        state_bits: 32 (default), 8 or 4: keep the state of parameters with at least 4096
            elements blockwise-quantized (:mod:`descent.lowbit.optim`); 8-bit momentum state:
            1.03 bytes/param (``benchmarks/state_memory.py``).
        min_8bit_size: parameters with fewer elements keep 32-bit state (default
            :data:`descent.lowbit.MIN_NUMEL`, 4096; bitsandbytes' name).
        stochastic_rounding: step bfloat16 parameters in float32 and round them stochastically.
        kahan_summation: step bfloat16 parameters in float32 with a bfloat16 compensation
            buffer (state ``kahan_comp``) carrying what rounding to bfloat16 dropped.
        capturable: a tensor ``lr`` stays on the device and the step makes no host sync (torch's
            fused kernel), so ``torch.cuda.graph`` can capture it (:mod:`descent.optim._run`;
            torch's SGD has no such flag: its fused kernel is capturable as it is).

    References:
        Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013), "On the
        importance of initialization and momentum in deep learning".

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = descent.SGD([w], lr=0.1, momentum=0.9, nesterov=True)
        >>> (w ** 2).sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([ 0.6200, -1.2400])
    """

    declaration = Declaration(
        functional=F.sgd,
        hyper=lambda g: dict(lr=scalar(g, g["lr"]), momentum=g["momentum"], dampening=g["dampening"],
                             weight_decay=g["weight_decay"], nesterov=g["nesterov"], maximize=g["maximize"],
                             **cautious_flag(g)),
        columns=("momentum_buffer",),  # created on the first step, as torch does
        loop_returns="momentum_buffer",
        kernels={"fused": Kernel("descent.kernels.launch:sgd_fused", torch_fused_sgd, steps=None, amp=True,
                                 capturable=True),
                 "foreach": Kernel("descent.kernels.launch:sgd_foreach", floating, steps=None)},
        meta=Meta("sgd", adaptive=False, state_bytes=4.0, paper="Robbins & Monro (1951); Sutskever et al. (2013)",
                  lr={"classification": 0.1, "language": 0.3, "convex": 0.05, "function": 1e-3}),
    )

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        cautious: bool = False,
        state_bits: int = 32,
        min_8bit_size: int | None = None,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
        capturable: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, fused=fused,
                        differentiable=differentiable,
                        backend=backend, skip_nonfinite=skip_nonfinite, cautious=cautious, state_bits=state_bits,
                        min_8bit_size=min_8bit_size,
                        capturable=capturable,
                        stochastic_rounding=stochastic_rounding,
                        kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _sparse_ok(self, group: dict[str, Any]) -> bool:
        return True  # sparse gradients (nn.Embedding(sparse=True)) run the loop, as in torch

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_nonneg("momentum", group["momentum"])
        check_nonneg("dampening", group["dampening"])
        check_nonneg("weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"Invalid nesterov=True with momentum={group['momentum']} and dampening={group['dampening']} "
                "(Nesterov momentum requires momentum > 0 and zero dampening)"
            )


class SGD8bit(SGD):
    """``SGD(..., state_bits=8)`` under bitsandbytes' name (same arguments as :class:`SGD`).

    As bitsandbytes' ``SGD8bit``, it needs momentum (the 8-bit state is the momentum buffer): a group
    with ``momentum=0`` raises ``ValueError``.

    Example:
        >>> import torch, descent
        >>> opt = descent.SGD8bit(torch.nn.Linear(64, 64).parameters(), lr=0.01, momentum=0.9)
        >>> opt.defaults["state_bits"]
        8
    """

    def __init__(self, params: Any, *args: Any, state_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(params, *args, state_bits=state_bits, **kwargs)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        if group["momentum"] == 0:
            raise ValueError(f"Invalid momentum: {group['momentum']!r} (SGD8bit keeps its momentum buffer in 8 bits "
                             "and needs momentum > 0, as bitsandbytes' SGD8bit; use descent.SGD without momentum)")
