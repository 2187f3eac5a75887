"""Adagrad (Duchi, Hazan & Singer, 2011)."""

from __future__ import annotations

from torch import Tensor


def adagrad(
    param: Tensor,
    grad: Tensor,
    state_sum: Tensor,
    *,
    step: int,
    lr: float,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
) -> None:
    r"""One Adagrad step on ``param``, in place.

    .. math::
        G_t &= G_{t-1} + g_t^2, \qquad
        \eta_t = \frac{\eta}{1 + (t-1)\,\delta} \\
        \theta_{t+1} &= \theta_t - \eta_t\, g_t / (\sqrt{G_t} + \epsilon)

    where :math:`g_t` includes coupled weight decay :math:`\lambda\theta_t` and
    :math:`\delta` is ``lr_decay``.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        state_sum: :math:`G`, the running sum of squared gradients, updated in place.
        step: :math:`t` after incrementing.
        lr, lr_decay, weight_decay, eps, maximize: as in the formula.

    Example:
        >>> import torch
        >>> p, g, s = torch.ones(2), torch.ones(2), torch.zeros(2)
        >>> adagrad(p, g, s, step=1, lr=0.5)
        >>> p
        tensor([0.5000, 0.5000])
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum.addcmul_(grad, grad, value=1)
    std = state_sum.sqrt().add_(eps)
    param.addcdiv_(grad, std, value=-clr)
