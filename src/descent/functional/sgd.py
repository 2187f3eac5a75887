"""Stochastic gradient descent with momentum, dampening, Nesterov and coupled weight decay."""

from __future__ import annotations

import torch
from torch import Tensor

from .cautious import cautious as _cautious


def sgd(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    cautious: bool = False,
) -> Tensor | None:
    r"""One SGD step on ``param``, in place.

    .. math::
        g_t &= \pm\nabla L(\theta_t) + \lambda\theta_t \\
        b_t &= \mu b_{t-1} + (1-\tau) g_t \quad (b_1 = g_1) \\
        \theta_{t+1} &= \theta_t - \eta\,(g_t + \mu b_t \text{ if Nesterov else } b_t)

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        momentum_buffer: ``b_{t-1}``, or ``None`` on the first step (it is then created).
        lr: learning rate :math:`\eta`.
        momentum: :math:`\mu`; 0 disables the buffer.
        dampening: :math:`\tau`.
        weight_decay: coupled L2 coefficient :math:`\lambda` (added to the gradient).
        nesterov: use the Nesterov look-ahead form.
        maximize: ascend instead of descend.

    Returns:
        The momentum buffer to keep in the state (``None`` when ``momentum == 0``).

    Example:
        >>> p, g = torch.ones(3), torch.full((3,), 0.5)
        >>> buf = sgd(p, g, None, lr=0.1, momentum=0.9)
        >>> p
        tensor([0.9500, 0.9500, 0.9500])
    """
    d_p = -grad if maximize else grad
    if weight_decay != 0:
        d_p = d_p.add(param, alpha=weight_decay)
    if momentum != 0:
        if momentum_buffer is None:
            momentum_buffer = torch.clone(d_p).detach()
        else:
            momentum_buffer.mul_(momentum).add_(d_p, alpha=1 - dampening)
        d_p = d_p.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
        if cautious:  # the momentum direction, masked where it disagrees with the gradient
            d_p = _cautious(d_p, -grad if maximize else grad)
    param.add_(d_p, alpha=-lr)
    return momentum_buffer if momentum != 0 else None
