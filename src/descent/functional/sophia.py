"""Sophia-G (Liu et al., 2023): clipped, diagonally preconditioned momentum."""

from __future__ import annotations

from torch import Tensor


def sophia(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    hessian: Tensor,
    *,
    lr: float,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float = 0.0,
    eps: float = 1e-15,
    maximize: bool = False,
) -> None:
    r"""One Sophia step on ``param``, in place (the Hessian EMA is not touched here).

    .. math::
        \theta \leftarrow \theta(1-\eta\lambda),\quad
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        \theta \leftarrow \theta - \eta\,\mathrm{sign}(m)\,
            \min\!\Big(\frac{|m|}{\rho\, b\, \max(h, 0) + \epsilon}, 1\Big)

    For :math:`h \ge 0` (always so with the Gauss-Newton-Bartlett estimator) this is
    exactly the reference implementation's ``|m| / (rho * bs * h + 1e-15)``; the
    :math:`\max(h, 0)` makes a negative Hutchinson estimate give the sign step, as the
    paper's :math:`\max(\gamma h, \epsilon)` does.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg: the momentum :math:`m`, updated in place.
        hessian: the diagonal Hessian EMA :math:`h` (read only).
        lr, beta1, rho, bs, weight_decay, eps: as in the formula (:math:`b` = ``bs``).
        maximize: ascend instead of descend.

    Example:
        >>> import torch
        >>> p, m, h = torch.ones(2), torch.zeros(2), torch.ones(2)
        >>> sophia(p, torch.ones(2), m, h, lr=0.1, beta1=0.5, rho=1.0, bs=1.0)
        >>> p  # ratio |m| / h = 0.5, so each coordinate moves lr * 0.5
        tensor([0.9500, 0.9500])
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad * (1 - beta1))
    ratio = (exp_avg.abs() / (hessian.clamp(min=0) * (rho * bs) + eps)).clamp_(max=1)
    param.sub_(exp_avg.sign() * ratio * lr)


def sophia_hessian_ema(hessian: Tensor, estimate: Tensor, *, beta2: float) -> None:
    r"""Fold a diagonal Hessian estimate into its EMA: :math:`h \leftarrow \beta_2 h + (1-\beta_2)\hat h`.

    Example:
        >>> import torch
        >>> h = torch.zeros(2)
        >>> sophia_hessian_ema(h, torch.tensor([4.0, 0.0]), beta2=0.75)
        >>> h
        tensor([1., 0.])
    """
    hessian.mul_(beta2).add_(estimate * (1 - beta2))
