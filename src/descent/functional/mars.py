"""MARS (Yuan et al., 2024): variance-reduced (corrected) gradients in AdamW, the approximate form."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cautious import cautious as _cautious


def mars(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    last_grad: Tensor,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    gamma: float = 0.025,
    weight_decay: float = 0.0,
    cautious: bool = False,
    maximize: bool = False,
) -> None:
    r"""One MARS-AdamW step on ``param``, in place (MARS-approx: the previous batch's gradient).

    .. math::
        c_t &= g_t + \gamma\frac{\beta_1}{1-\beta_1}(g_t - g_{t-1}),\qquad
        \tilde c_t = c_t / \max(1, \|c_t\|_2) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\tilde c_t,\qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde c_t^2 \\
        \theta_{t+1} &= \theta_t - \eta\left(\frac{m_t/(1-\beta_1^t)}
            {\sqrt{v_t/(1-\beta_2^t)} + \epsilon} + \lambda\theta_t\right)

    with :math:`g_0 = 0`. The norm of the clip is per parameter tensor.
    ``last_grad`` receives :math:`g_t` at the end of the step.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg, exp_avg_sq: :math:`m, v`, updated in place.
        last_grad: :math:`g_{t-1}` (zeros at first), overwritten with :math:`g_t`.
        step: :math:`t` after incrementing (1 on the first step).
        lr, beta1, beta2, eps, gamma, weight_decay: as in the formula.
        cautious: mask the momentum with :func:`descent.functional.cautious`.
        maximize: ascend instead of descend.

    References:
        Yuan, Liu, Wu, Zhou & Gu (2024), "MARS: Unleashing the Power of Variance
        Reduction for Training Large Models", Algorithm 2 (MARS-AdamW);
        github.com/AGI-Arena/MARS.

    Example:
        >>> p, m, v, last = torch.ones(2), torch.zeros(2), torch.zeros(2), torch.zeros(2)
        >>> mars(p, torch.ones(2), m, v, last, step=1, lr=0.1, beta1=0.95, beta2=0.99, eps=1e-8)
        >>> p
        tensor([0.9000, 0.9000])
    """
    if maximize:
        grad = -grad
    c = (grad - last_grad).mul_(gamma * beta1 / (1 - beta1)).add_(grad)
    norm = float(torch.linalg.vector_norm(c)) if c.numel() else 0.0
    if norm > 1.0:
        c.div_(norm)
    exp_avg.lerp_(c, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(c, c, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    m = _cautious(exp_avg, grad) if cautious else exp_avg
    update = (m / (1 - beta1**step)).div_(denom)
    if weight_decay != 0:
        update.add_(param, alpha=weight_decay)
    param.add_(update, alpha=-lr)
    last_grad.copy_(grad)
