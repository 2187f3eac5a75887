"""``descent.Adam`` and ``descent.AdamW``: drop-ins for their torch namesakes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ._validate import check_betas, check_nonneg
from ._backend import floating, torch_fused
from ._base import Optimizer
from ._spec import Declaration, Kernel, Meta, zeros, cautious_flag, scalar
from ..lowbit.optim import LowBitMixin


class Adam(LowBitMixin, Optimizer):
    r"""Adam with bias correction, optional AMSGrad and optional decoupled weight decay.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        \theta_{t+1} = \theta_t - \eta\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    Weight decay is coupled (added to :math:`g_t`) unless ``decoupled_weight_decay``,
    which gives :class:`AdamW`. Arguments, defaults and state keys (``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) are torch's. The default CPU path
    is torch's fused kernel, tested against :func:`descent.functional.adam`.

    Args:
        params: parameters or param group dicts.
        lr: learning rate (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: :math:`\lambda` (default 0).
        amsgrad: use the running maximum of :math:`v_t`.
        maximize, foreach, fused, backend, skip_nonfinite, cautious: see :class:`descent.SGD`.
        capturable: step counters and a tensor ``lr`` stay on the device and the step makes no
            host sync (torch's fused kernel, or its capturable foreach formulas), so
            ``torch.cuda.graph`` can capture it (see :mod:`descent.optim._run`).
        decoupled_weight_decay: decay the weights directly (AdamW).
        state_bits: 32 (default), 8 or 4: keep the state of parameters with at least 4096
            elements blockwise-quantized (:mod:`descent.lowbit.optim`); 8-bit AdamW state:
            2.05 bytes/param (``benchmarks/state_memory.py``).
        min_8bit_size: parameters with fewer elements keep 32-bit state (default
            :data:`descent.lowbit.MIN_NUMEL`, 4096; bitsandbytes' name).
        stochastic_rounding: step bfloat16 parameters in float32 and round them stochastically.
        kahan_summation: step bfloat16 parameters in float32 with a bfloat16 compensation
            buffer (state ``kahan_comp``) carrying what rounding to bfloat16 dropped.

    References:
        Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization";
        Reddi, Kale & Kumar (2018), "On the Convergence of Adam and Beyond".

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = descent.Adam([w], lr=0.1)
        >>> w.sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([0.9000, 0.9000])
    """

    declaration = Declaration(
        functional=F.adam,
        hyper=lambda g: dict(lr=scalar(g, g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                             weight_decay=g["weight_decay"], amsgrad=g["amsgrad"], maximize=g["maximize"],
                             decoupled_weight_decay=bool(g["decoupled_weight_decay"]), **cautious_flag(g)),
        columns=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        state={"exp_avg": zeros, "exp_avg_sq": zeros, "max_exp_avg_sq": zeros},
        optional={"max_exp_avg_sq": lambda g: bool(g["amsgrad"])},
        steps=True,
        kernels={"fused": Kernel("descent.kernels.launch:adam_fused", torch_fused, steps="tensor", amp=True,
                                 capturable=True),
                 "foreach": Kernel("descent.kernels.launch:adam_foreach", floating, steps="tensor", capturable=True)},
        meta=Meta("adam", adaptive=True, state_bytes=8.0, paper="Kingma & Ba (2015), arXiv:1412.6980",
                  lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}),
    )
    _decoupled = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        cautious: bool = False,
        state_bits: int = 32,
        min_8bit_size: int | None = None,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, fused=fused, backend=backend, differentiable=differentiable,
                        capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
                        skip_nonfinite=skip_nonfinite, cautious=cautious, state_bits=state_bits,
                        min_8bit_size=min_8bit_size,
                        stochastic_rounding=stochastic_rounding,
                        kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_nonneg("eps", group["eps"])
        check_betas(group["betas"])
        check_nonneg("weight_decay", group["weight_decay"])

class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    .. math::
        \theta_t \leftarrow \theta_t(1 - \eta\lambda), \qquad
        \theta_{t+1} = \theta_t - \eta\,\hat m_t / (\sqrt{\hat v_t} + \epsilon)

    Same arguments and defaults as ``torch.optim.AdamW`` (``weight_decay=1e-2``); see
    :class:`Adam` for the rest. The decay is multiplied by the *current* lr, so a
    schedule scales it too, as in torch and optax.

    References:
        Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization".

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.AdamW(descent.param_groups(model, weight_decay=0.1), lr=3e-4)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
    """

    _decoupled = True
    declaration = replace(Adam.declaration, meta=Meta(
        "adamw", adaptive=True, state_bytes=8.0, paper="Loshchilov & Hutter (2019), arXiv:1711.05101",
        lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}))

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        cautious: bool = False,
        state_bits: int = 32,
        min_8bit_size: int | None = None,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, backend=backend, skip_nonfinite=skip_nonfinite, cautious=cautious,
                         state_bits=state_bits, min_8bit_size=min_8bit_size, stochastic_rounding=stochastic_rounding,
                         kahan_summation=kahan_summation)


class AdamW8bit(AdamW):
    """``AdamW(..., state_bits=8)`` under bitsandbytes' name (same arguments as :class:`AdamW`).

    Example:
        >>> import torch, descent
        >>> opt = descent.AdamW8bit(torch.nn.Linear(64, 64).parameters(), lr=1e-3)
        >>> opt.defaults["state_bits"]
        8
    """

    def __init__(self, params: Any, *args: Any, state_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(params, *args, state_bits=state_bits, **kwargs)


class AdamW4bit(AdamW):
    """``AdamW(..., state_bits=4)`` under torchao's name (same arguments as :class:`AdamW`).

    Example:
        >>> import torch, descent
        >>> descent.AdamW4bit(torch.nn.Linear(64, 64).parameters(), lr=1e-3).defaults["state_bits"]
        4
    """

    def __init__(self, params: Any, *args: Any, state_bits: int = 4, **kwargs: Any) -> None:
        super().__init__(params, *args, state_bits=state_bits, **kwargs)


class Adam8bit(Adam):
    """``Adam(..., state_bits=8)`` under bitsandbytes' name (same arguments as :class:`Adam`).

    Example:
        >>> import torch, descent
        >>> descent.Adam8bit(torch.nn.Linear(64, 64).parameters(), lr=1e-3).defaults["state_bits"]
        8
    """

    def __init__(self, params: Any, *args: Any, state_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(params, *args, state_bits=state_bits, **kwargs)


class Adam4bit(Adam):
    """``Adam(..., state_bits=4)`` under torchao's name (same arguments as :class:`Adam`).

    Example:
        >>> import torch, descent
        >>> descent.Adam4bit(torch.nn.Linear(64, 64).parameters(), lr=1e-3).defaults["state_bits"]
        4
    """

    def __init__(self, params: Any, *args: Any, state_bits: int = 4, **kwargs: Any) -> None:
        super().__init__(params, *args, state_bits=state_bits, **kwargs)
