"""Adagrad (Duchi, Hazan & Singer, 2011)."""

from __future__ import annotations

import torch
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
    clr = lr / (1 + (step - 1) * lr_decay)
    if grad.is_sparse:
        if weight_decay != 0:
            raise RuntimeError(f"Invalid weight_decay: {weight_decay} (Adagrad's weight decay is not compatible "
                               "with sparse gradients)")
        _sparse_adagrad(param, grad, state_sum, clr, eps)
        return
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    state_sum.addcmul_(grad, grad, value=1)
    std = state_sum.sqrt()
    # Under autograd (differentiable=True) sqrt's output is saved for backward: no in-place add.
    std = std + eps if torch.is_grad_enabled() else std.add_(eps)
    param.addcdiv_(grad, std, value=-clr)


def _sparse_adagrad(param: Tensor, grad: Tensor, state_sum: Tensor, clr: float, eps: float) -> None:
    """The step on the rows a sparse gradient touches (torch's sparse Adagrad, same order of operations)."""
    grad = grad.coalesce()
    indices, values = grad._indices(), grad._values()

    def like(v: Tensor) -> Tensor:
        return torch.sparse_coo_tensor(indices, v, grad.size())

    state_sum.add_(like(values.pow(2)))
    std = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
    param.add_(like(values / std), alpha=-clr)
