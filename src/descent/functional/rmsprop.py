"""RMSprop (Hinton, Lecture 6e, 2012), with the centered variant of Graves (2013)."""

from __future__ import annotations

import torch
from torch import Tensor


def rmsprop(
    param: Tensor,
    grad: Tensor,
    square_avg: Tensor,
    grad_avg: Tensor | None,
    momentum_buffer: Tensor | None,
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> None:
    r"""One RMSprop step on ``param``, in place.

    .. math::
        v_t &= \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \ (\text{centered}) \\
        d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \ (\text{centered}),
            \quad \sqrt{v_t} + \epsilon \ (\text{otherwise}) \\
        b_t &= \mu b_{t-1} + g_t / d_t, \quad \theta_{t+1} = \theta_t - \eta b_t
            \quad (\text{or } \theta_t - \eta g_t/d_t \text{ when } \mu = 0)

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified); coupled weight decay is added to it.
        square_avg: :math:`v`, updated in place.
        grad_avg: :math:`\bar g` when ``centered``, else ``None``.
        momentum_buffer: :math:`b` when ``momentum > 0``, else ``None``.
        lr, alpha, eps, weight_decay, momentum, centered, maximize: as in the formula.

    Example:
        >>> import torch
        >>> p, g, v = torch.ones(2), torch.ones(2), torch.zeros(2)
        >>> rmsprop(p, g, v, None, None, lr=0.01, alpha=0.0, eps=0.0)
        >>> p
        tensor([0.9900, 0.9900])
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    tracked = torch.is_grad_enabled()  # differentiable=True: sqrt's output is saved, no in-place on it
    if centered:
        if grad_avg is None:
            raise ValueError("rmsprop: centered=True needs grad_avg")
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1)
        avg = avg.sqrt() if tracked else avg.sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg + eps if tracked else avg.add_(eps)
    if momentum > 0:
        if momentum_buffer is None:
            raise ValueError("rmsprop: momentum > 0 needs momentum_buffer")
        momentum_buffer.mul_(momentum).addcdiv_(grad, avg)
        param.add_(momentum_buffer, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)
