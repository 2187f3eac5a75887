"""Lion (Chen et al., 2023): sign of an interpolated momentum, decoupled weight decay."""

from __future__ import annotations

from torch import Tensor

from .cautious import cautious as _cautious


def lion(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    cautious: bool = False,
) -> None:
    r"""One Lion step on ``param``, in place.

    .. math::
        c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\mathrm{sign}(c_t),\quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    Every product and sum is rounded separately (no fused multiply-add), in the order
    written, so descent's Numba kernel reproduces it bit for bit in float64.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg: the momentum :math:`m`, updated in place.
        lr, beta1, beta2, weight_decay: as in the formula.
        maximize: ascend instead of descend.
        cautious: zero the coordinates whose sign disagrees with the gradient
            (:func:`descent.functional.cautious`, Liang et al. 2024).

    Example:
        >>> import torch
        >>> p, m = torch.ones(2), torch.zeros(2)
        >>> lion(p, torch.tensor([1.0, -1.0]), m, lr=0.1, beta1=0.9, beta2=0.99)
        >>> p
        tensor([0.9000, 1.1000])
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    c = exp_avg * beta1 + grad * (1 - beta1)
    u = _cautious(c.sign_(), grad) if cautious else c.sign_()
    param.sub_(u * lr)
    exp_avg.mul_(beta2).add_(grad * (1 - beta2))
