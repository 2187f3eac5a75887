"""``descent.LAMB``: layer-wise adaptive moments (You et al., 2020)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from .._validate import check_betas, check_nonneg, check_positive
from ._backend import floating
from ._base import Optimizer, step_tensor


class LAMB(Optimizer):
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

    The default CPU backend (``"fused"``) is one Numba pass per tensor (moments and the
    direction :math:`u`, into a temporary), then torch's norms and one in-place apply;
    in float64 it equals :func:`descent.functional.lamb`.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-6, as the paper's code).
        weight_decay: decoupled :math:`\lambda` (default 0).
        clamp_value: upper clip of :math:`\|\theta\|` in the ratio, or None (default).
        bias_correction: divide the moments by :math:`1-\beta^t` (default True).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.

    References:
        You et al. (2020), "Large Batch Optimization for Deep Learning: Training BERT
        in 76 minutes", Algorithm 2.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.LAMB(model.parameters(), lr=1e-2, weight_decay=0.01)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
    """

    _supported = {"loop": floating, "fused": K.numba_cpu}

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
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clamp_value=clamp_value,
                        bias_correction=bias_correction, maximize=maximize, foreach=foreach, fused=fused,
                        backend=backend, skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        if group["clamp_value"] is not None:
            check_positive("clamp_value", group["clamp_value"])

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": step_tensor(p),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> None:
        b1, b2 = group["betas"]
        hp = dict(lr=float(group["lr"]), beta1=b1, beta2=b2, eps=group["eps"], weight_decay=group["weight_decay"],
                  clamp_value=group["clamp_value"], bias_correction=group["bias_correction"],
                  maximize=group["maximize"])
        # one scratch buffer for the direction u, reused by every tensor of the bucket
        scratch = torch.empty(max(p.numel() for p in params), dtype=params[0].dtype) if backend == "fused" else None
        for p, g, s in zip(params, grads, states):
            s["step"] += 1
            step = int(s["step"].item())
            if backend == "fused" and K.kernel_ok(p, g, s["exp_avg"], s["exp_avg_sq"]):
                _lamb_fused(p, g, s["exp_avg"], s["exp_avg_sq"], scratch[: p.numel()].view_as(p), step=step, **hp)
            else:
                F.lamb(p, g, s["exp_avg"], s["exp_avg_sq"], step=step, **hp)


def _lamb_fused(p: Tensor, g: Tensor, m: Tensor, v: Tensor, u: Tensor, *, step: int, lr: float, beta1: float,
                beta2: float,
                eps: float, weight_decay: float, clamp_value: float | None, bias_correction: bool,
                maximize: bool) -> None:
    """Kernel pass (moments and direction u, vectorized), torch norms, torch apply.

    Measured: a Numba pass that also sums the norms does not vectorize without
    fastmath (its divisions and square roots go scalar) and ran ~5x slower.
    """
    from ..kernels.elementwise import lamb_direction_kernel

    pa = K.flat(p)
    dt = pa.dtype.type
    bc1 = dt(1 - beta1**step if bias_correction else 1.0)
    bc2 = dt(1 - beta2**step if bias_correction else 1.0)
    lamb_direction_kernel(pa, K.flat(g), K.flat(m), K.flat(v), K.flat(u), dt(beta1), dt(1 - beta1), dt(beta2),
                          dt(1 - beta2), bc1, bc2, dt(eps), dt(weight_decay), dt(-1.0 if maximize else 1.0))
    ratio = F.trust_ratio(p.norm(), u.norm(), clamp_value)
    p.sub_(u.mul_(ratio * lr))
