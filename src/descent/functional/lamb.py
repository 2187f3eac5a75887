"""LAMB (You et al., 2020): Adam direction, rescaled per layer by a trust ratio."""

from __future__ import annotations

import torch
from torch import Tensor


def lamb_direction(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, step: int, beta1: float,
                   beta2: float, eps: float, weight_decay: float, bias_correction: bool = True) -> Tensor:
    r"""The Adam direction with decoupled decay, :math:`u = \hat m/(\sqrt{\hat v}+\epsilon) + \lambda\theta` (a new tensor)."""
    bc1 = 1 - beta1**step if bias_correction else 1.0
    bc2 = 1 - beta2**step if bias_correction else 1.0
    u = (exp_avg / bc1) / ((exp_avg_sq / bc2).sqrt_() + eps)
    if weight_decay != 0:
        u.add_(param * weight_decay)
    return u


def trust_ratio(weight_norm: Tensor, update_norm: Tensor, clamp_value: float | None = None) -> Tensor:
    r""":math:`\phi(\|\theta\|)/\|u\|`, or 1 where either norm is 0; :math:`\phi` clips at ``clamp_value``."""
    if clamp_value is not None:
        weight_norm = weight_norm.clamp(max=clamp_value)
    ok = (weight_norm > 0) & (update_norm > 0)
    return torch.where(ok, weight_norm / torch.where(ok, update_norm, 1.0), 1.0)


def lamb(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    clamp_value: float | None = None,
    bias_correction: bool = True,
    maximize: bool = False,
) -> Tensor:
    r"""One LAMB step on ``param``, in place; returns the trust ratio used (a 0-d tensor).

    .. math::
        m_t = \beta_1 m + (1-\beta_1) g,\quad v_t = \beta_2 v + (1-\beta_2) g^2,\quad
        u = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon} + \lambda\theta \\
        \theta \leftarrow \theta - \eta\,\frac{\phi(\|\theta\|)}{\|u\|}\,u, \qquad
        \phi(z) = \min(z, \text{clamp\_value}) \ (\text{identity when None})

    The ratio is 1 where :math:`\|\theta\|` or :math:`\|u\|` is 0.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg, exp_avg_sq: :math:`m`, :math:`v`, updated in place.
        step: the step number after incrementing (1 on the first step).
        lr, beta1, beta2, eps, weight_decay, clamp_value: as in the formula.
        bias_correction: divide by :math:`1-\beta^t` (the paper's Algorithm 2 does).
        maximize: ascend instead of descend.

    Example:
        >>> import torch
        >>> p, m, v = torch.full((4,), 2.0), torch.zeros(4), torch.zeros(4)
        >>> r = lamb(p, torch.ones(4), m, v, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-6)
        >>> round(float(r), 4), p  # ||p|| / ||u|| = 4 / 2: the step is lr * 2 per coordinate
        (2.0, tensor([1.8000, 1.8000, 1.8000, 1.8000]))
    """
    if maximize:
        grad = -grad
    exp_avg.mul_(beta1).add_(grad * (1 - beta1))
    exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
    u = lamb_direction(param, exp_avg, exp_avg_sq, step=step, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, bias_correction=bias_correction)
    ratio = trust_ratio(param.norm(), u.norm(), clamp_value)
    param.sub_(u * (ratio * lr))
    return ratio
