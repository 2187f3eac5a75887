"""Schedule-free SGD and AdamW (Defazio et al., 2024): averaging instead of a schedule."""

from __future__ import annotations



from torch import Tensor


def schedule_free_weight(k: int, *, lr: float, warmup_steps: int, r: float, weight_lr_power: float,
                         lr_max: float, weight_sum: float) -> tuple[float, float, float, float]:
    r"""The scalars of schedule-free step ``k`` (0 on the first step) for one param group.

    .. math::
        \gamma_k = \gamma\,\min\!\left(1, \tfrac{k+1}{T_w}\right),\quad
        \gamma^{\max}_k = \max(\gamma^{\max}_{k-1}, \gamma_k),\quad
        w_k = (k+1)^r (\gamma^{\max}_k)^{p},\quad
        c_{k+1} = \frac{w_k}{\sum_{i\le k} w_i}

    Returns:
        ``(lr_k, lr_max, weight_sum, c)``: the warmed-up lr, the new running max, the
        new weight sum and the averaging weight :math:`c_{k+1}` (0 while every weight is 0).

    Example:
        >>> schedule_free_weight(0, lr=1.0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
        ...                      lr_max=-1.0, weight_sum=0.0)
        (1.0, 1.0, 1.0, 1.0)
    """
    lr_k = lr * ((k + 1) / warmup_steps if k < warmup_steps else 1.0)
    lr_max = max(lr_k, lr_max)
    weight = ((k + 1) ** r) * (lr_max**weight_lr_power)
    weight_sum = weight_sum + weight
    c = weight / weight_sum if weight_sum != 0 else 0.0
    return lr_k, lr_max, weight_sum, c


def schedule_free_sgd(param: Tensor, grad: Tensor, z: Tensor, *, lr: float, momentum: float, c: float,
                      weight_decay: float = 0.0, maximize: bool = False) -> None:
    r"""One schedule-free SGD step; ``param`` holds :math:`y` (train mode), in place.

    .. math::
        y_t = (1-\beta) z_t + \beta x_t,\quad
        z_{t+1} = z_t - \gamma\,(\nabla f(y_t) + \lambda y_t),\quad
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}

    written on :math:`y` alone (as the reference code does):
    :math:`y \leftarrow y + c\,(z - y) + \gamma(\beta(1-c) - 1)\,\hat g`, then
    :math:`z \leftarrow z - \gamma \hat g`, with :math:`\hat g = g + \lambda y`.
    :math:`x` is recovered as :math:`y + (1 - 1/\beta)(z - y)` (the eval point).

    Args:
        param: :math:`y`, updated in place.
        grad: the gradient at :math:`y` (not modified).
        z: the SGD sequence, updated in place.
        lr: :math:`\gamma_k` (already warmed up), momentum: :math:`\beta`,
        c: :math:`c_{k+1}` from :func:`schedule_free_weight`.
        weight_decay: :math:`\lambda`, evaluated at :math:`y`.
        maximize: ascend instead of descend.

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky (2024), "The Road Less
        Scheduled", Algorithm 1; github.com/facebookresearch/schedule_free.

    Example:
        >>> import torch
        >>> y = torch.ones(2); z = y.clone()
        >>> schedule_free_sgd(y, torch.ones(2), z, lr=0.1, momentum=0.9, c=1.0)
        >>> y, z
        (tensor([0.9000, 0.9000]), tensor([0.9000, 0.9000]))
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g.add(param, alpha=weight_decay)
    param.lerp_(z, c)
    param.add_(g, alpha=lr * (momentum * (1 - c) - 1))
    z.sub_(g, alpha=lr)


def schedule_free_adamw(param: Tensor, grad: Tensor, z: Tensor, exp_avg_sq: Tensor, *, step: int, lr: float,
                        beta1: float, beta2: float, eps: float, c: float, weight_decay: float = 0.0,
                        maximize: bool = False) -> None:
    r"""One schedule-free AdamW step; ``param`` holds :math:`y` (train mode), in place.

    As :func:`schedule_free_sgd` with the Adam-normalized gradient
    :math:`\hat g = g / (\sqrt{v_t/(1-\beta_2^t)} + \epsilon) + \lambda y`,
    :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2`, and :math:`\beta = \beta_1`.

    Args:
        param, grad, z: as in :func:`schedule_free_sgd`.
        exp_avg_sq: :math:`v`, updated in place.
        step: :math:`t` of the bias correction (1 on the group's first step).
        lr, beta1, beta2, eps, c, weight_decay, maximize: as in the formula.

    References:
        Defazio et al. (2024), "The Road Less Scheduled", Algorithm 1 and Appendix.

    Example:
        >>> import torch
        >>> y = torch.ones(2); z = y.clone(); v = torch.zeros(2)
        >>> schedule_free_adamw(y, torch.ones(2), z, v, step=1, lr=0.1, beta1=0.9, beta2=0.999,
        ...                     eps=1e-8, c=1.0)
        >>> y
        tensor([0.9000, 0.9000])
    """
    g = -grad if maximize else grad
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)
    g = g / denom
    if weight_decay != 0:
        g.add_(param, alpha=weight_decay)
    param.lerp_(z, c)
    param.add_(g, alpha=lr * (beta1 * (1 - c) - 1))
    z.sub_(g, alpha=lr)


def schedule_free_to_eval(param: Tensor, z: Tensor, *, beta: float) -> None:
    r"""Move ``param`` from :math:`y` to the average :math:`x = y + (1-1/\beta)(z-y)`, in place."""
    param.lerp_(z, 1 - 1 / beta)


def schedule_free_to_train(param: Tensor, z: Tensor, *, beta: float) -> None:
    r"""Move ``param`` from :math:`x` back to :math:`y = x + (1-\beta)(z-x)`, in place."""
    param.lerp_(z, 1 - beta)


__all__ = ["schedule_free_weight", "schedule_free_sgd", "schedule_free_adamw", "schedule_free_to_eval",
           "schedule_free_to_train"]
