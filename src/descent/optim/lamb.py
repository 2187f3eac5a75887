"""``descent.LAMB``: layer-wise adaptive moments (You et al., 2020)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ._validate import check_betas, check_nonneg, check_positive
from ._backend import floating
from ._base import Optimizer, advance_steps, step_tensor


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

    The default CPU backend (``"fused"``) is one Numba call per device/dtype bucket
    (:func:`descent.kernels.elementwise.lamb_multi`): a pass that updates the moments,
    writes :math:`u` into a scratch buffer and sums the two norms, then a pass that
    applies the step, over a wave of tensors small enough (about 0.5M elements) that the
    second pass reads from cache (a tensor above 2M elements is its own wave and
    recomputes :math:`u` instead of storing it). In float64 it equals
    :func:`descent.functional.lamb` to 1e-13.

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
        steps = advance_steps([s["step"] for s in states])
        ms, vs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        fused, rest = K.partition(params, grads, ms, vs) if backend == "fused" else ([], range(len(params)))
        if fused:
            _lamb_fused(*(K.take(c, fused) for c in (params, grads, ms, vs, steps)), **hp)
        for i in rest:
            F.lamb(params[i], grads[i], ms[i], vs[i], step=steps[i], **hp)


def _lamb_fused(params: list[Tensor], grads: list[Tensor], ms: list[Tensor], vs: list[Tensor], steps: list[int], *,
                lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, clamp_value: float | None,
                bias_correction: bool, maximize: bool) -> None:
    """One Numba call over the bucket: moments and norms, trust ratios, apply (:func:`lamb_multi`)."""
    from ..kernels import multi
    from ..kernels.elementwise import lamb_multi

    plan, like = K.bucket_plan(params), K.like(params[0])
    dt = like.dtype.type
    t = np.asarray(steps, dtype=np.float64)
    bc1 = (1 - beta1**t if bias_correction else np.ones_like(t)).astype(like.dtype)
    bc2 = (1 - beta2**t if bias_correction else np.ones_like(t)).astype(like.dtype)
    # waves up to 4x the target size store the direction; a bigger one (one large tensor) recomputes it
    scratch = np.empty(plan.scratch_numel(4 * multi.WAVE), dtype=like.dtype)
    lamb_multi(K.addresses(params, grads, ms, vs), plan.sizes, plan.blocks, plan.waves, plan.offsets, plan.wave_sizes, like,
               scratch,
               bc1, bc2, dt(beta1),
               dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay), dt(-1.0 if maximize else 1.0),
               float(lr), -1.0 if clamp_value is None else float(clamp_value), np.zeros((len(plan.blocks), 2)),
               np.zeros((len(params), 2)), np.ones(len(params)))
