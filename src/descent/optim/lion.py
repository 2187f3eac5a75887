"""``descent.Lion``: evolved sign momentum (Chen et al., 2023)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import kernels as K
from ..kernels import triton as KT
from ._backend import floating
from ._validate import check_betas, check_nonneg
from ._base import Optimizer
from ._spec import Declaration, Kernel, Meta, zeros, cautious_flag, scalar
from ..lowbit.optim import LowBitMixin


class Lion(LowBitMixin, Optimizer):
    r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

    .. math::
        c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\mathrm{sign}(c_t),\quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    One state tensor per parameter (``exp_avg``): 4 bytes per float32 parameter, half
    of AdamW's. Because every coordinate moves by :math:`\pm\eta`, Lion wants a lr
    3-10x smaller and a weight decay 3-10x larger than AdamW
    (:func:`descent.lion_from_adamw`). The default CPU backend (``"fused"``) is one
    single-pass Numba kernel call over all the tensors of a device/dtype bucket, equal
    bit for bit to :func:`descent.functional.lion`;
    other devices and dtypes (and non-contiguous tensors) run the ``"loop"`` backend.
    Same defaults as the reference implementation (google/automl ``lion_pytorch.py``)
    and lion-pytorch; no ``step`` is stored (Lion needs none).

    Args:
        params: parameters or param group dicts.
        lr: learning rate :math:`\eta` (default 1e-4).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.99)).
        weight_decay: decoupled :math:`\lambda` (default 0).
        maximize: ascend instead of descend.
        backend: ``"fused"`` (Numba, CPU), ``"loop"`` or ``None`` (choose).
        skip_nonfinite: skip the step on NaN/Inf gradients (see :class:`descent.SGD`).
        cautious: mask the update where it disagrees with the gradient (see :class:`descent.SGD`).
        state_bits: 32 (default), 8 or 4: keep the state of parameters with at least 4096
            elements blockwise-quantized (:mod:`descent.lowbit.optim`); 8-bit Lion state:
            1.03 bytes/param (``benchmarks/state_memory.py``).
        min_8bit_size: parameters with fewer elements keep 32-bit state (default
            :data:`descent.lowbit.MIN_NUMEL`, 4096; bitsandbytes' name).
        stochastic_rounding: step bfloat16 parameters in float32 and round them stochastically.
        kahan_summation: step bfloat16 parameters in float32 with a bfloat16 compensation
            buffer (state ``kahan_comp``) carrying what rounding to bfloat16 dropped.
        capturable: step counters and tensor hyperparameters (``lr``, ``weight_decay``...) stay
            on the device and the step makes no host sync (the Triton kernel, on CUDA), so
            ``torch.cuda.graph`` can capture it (:mod:`descent.optim._run`).

    References:
        Chen et al. (2023), "Symbolic Discovery of Optimization Algorithms", Algorithm 2.

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> opt = descent.Lion([w], lr=0.1)
        >>> (w ** 2).sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([ 0.9000, -0.9000])
    """

    declaration = Declaration(
        functional=F.lion,
        hyper=lambda g: dict(lr=scalar(g, g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1],
                             weight_decay=scalar(g, g["weight_decay"]), maximize=bool(g["maximize"]), **cautious_flag(g)),
        columns=("exp_avg",),
        state={"exp_avg": zeros},
        kernels={"fused": (Kernel("descent.kernels.launch:lion", K.numba_cpu, steps=None),
                           Kernel("descent.kernels.triton:lion", KT.supports, steps=None, capturable=True)),
                 "foreach": Kernel("descent.kernels.foreach:lion", floating, steps=None)},
        meta=Meta("lion", adaptive=True, state_bytes=4.0, paper="Chen et al. (2023), arXiv:2302.06675",
                  lr={"classification": 1e-3, "language": 3e-4, "convex": 1e-3, "function": 1e-2},
                  weight_decay=0.1),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
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
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused, backend=backend, skip_nonfinite=skip_nonfinite, cautious=cautious,
                        capturable=capturable,
                        state_bits=state_bits, min_8bit_size=min_8bit_size, stochastic_rounding=stochastic_rounding,
                        kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_nonneg("weight_decay", group["weight_decay"])


class Lion8bit(Lion):
    """``Lion(..., state_bits=8)`` under bitsandbytes' name (same arguments as :class:`Lion`).

    Example:
        >>> import torch, descent
        >>> descent.Lion8bit(torch.nn.Linear(64, 64).parameters(), lr=1e-4).defaults["state_bits"]
        8
    """

    def __init__(self, params: Any, *args: Any, state_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(params, *args, state_bits=state_bits, **kwargs)
