"""``descent.LAMB``: layer-wise adaptive moments (You et al., 2020)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ..kernels import triton as KT
from ._backend import floating
from ._validate import check_betas, check_nonneg, check_positive
from ..lowbit.rounding import RoundingMixin
from ._base import Optimizer
from ._spec import Declaration, Kernel, Meta, scalar, zeros


class LAMB(RoundingMixin, Optimizer):
    r"""LAMB: the AdamW direction, rescaled per parameter tensor by a trust ratio.

    .. math::
        u_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon} + \lambda\theta_t,\qquad
        \theta_{t+1} = \theta_t - \eta\,\frac{\phi(\|\theta_t\|)}{\|u_t\|}\,u_t

    with Adam's moments :math:`m_t, v_t` and a ratio of 1 where either norm is 0.

    **Trust-ratio choice.** Implementations disagree (by up to ~18% in the step):
    the paper's TensorFlow code and NVIDIA apex use :math:`\phi(z) = z` with bias
    correction; pytorch-lamb and pytorch-optimizer clip :math:`\|\theta\|` at 10
    (pytorch-lamb also drops bias correction). descent follows the paper's Algorithm 2
    and its reference code: bias correction on, :math:`\phi` the identity
    (``clamp_value=None``). Pass ``clamp_value=10.0`` to get pytorch-optimizer's
    :math:`\phi(z)=\min(z, 10)`, ``bias_correction=False`` for pytorch-lamb's. Every
    parameter tensor is one "layer"; exclude biases and norms from adaptation and decay
    with :func:`descent.param_groups` and a group of plain Adam if you wish.

    The default CPU backend (``"fused"``) is one Numba call per device/dtype bucket
    (:func:`descent.kernels.elementwise.lamb_multi`) with one parallel region: each thread
    takes a run of whole tensors and, tensor by tensor, updates the moments, writes
    :math:`u` into its scratch buffer and sums the two norms, then applies the step while
    the tensor is still in cache (a tensor above 2M elements recomputes :math:`u` instead
    of storing it). In float64 it equals :func:`descent.functional.lamb` to 1e-13.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-6, as the paper's code).
        weight_decay: decoupled :math:`\lambda` (default 0).
        clamp_value: upper clip of :math:`\|\theta\|` in the ratio, or None (default).
        bias_correction: divide the moments by :math:`1-\beta^t` (default True).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).
        capturable: step counters and tensor hyperparameters (``lr``, ``weight_decay``...) stay
            on the device and the step makes no host sync (the Triton kernel, on CUDA), so
            ``torch.cuda.graph`` can capture it (:mod:`descent.optim._run`).

    References:
        You et al. (2020), "Large Batch Optimization for Deep Learning: Training BERT
        in 76 minutes", Algorithm 2.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.LAMB(model.parameters(), lr=1e-2, weight_decay=0.01)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
    """

    declaration = Declaration(
        functional=F.lamb,
        hyper=lambda g: dict(lr=scalar(g, g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                             weight_decay=scalar(g, g["weight_decay"]), clamp_value=g["clamp_value"],
                             bias_correction=g["bias_correction"], maximize=g["maximize"]),
        columns=("exp_avg", "exp_avg_sq"),
        state={"exp_avg": zeros, "exp_avg_sq": zeros},
        steps=True,
        kernels={"fused": (Kernel("descent.kernels.launch:lamb", K.numba_cpu),
                           Kernel("descent.kernels.triton:lamb", KT.supports, capturable=True)),
                 "foreach": Kernel("descent.kernels.foreach:lamb", floating)},
        meta=Meta("lamb", adaptive=True, state_bytes=8.0, paper="You et al. (2020), arXiv:1904.00962",
                  lr={"classification": 1e-2, "language": 1e-2, "convex": 0.01, "function": 0.05},
                  weight_decay=0.01),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        clamp_value: float | None = None,
        bias_correction: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        capturable: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clamp_value=clamp_value,
                        bias_correction=bias_correction, maximize=maximize, foreach=foreach, fused=fused,
                        backend=backend, skip_nonfinite=skip_nonfinite, capturable=capturable,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        if group["clamp_value"] is not None:
            check_positive("clamp_value", group["clamp_value"])
