"""Adam (Kingma & Ba, 2015), AMSGrad (Reddi et al., 2018) and AdamW (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from .cautious import cautious as _cautious


def adam(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    cautious: bool = False,
) -> None:
    r"""One Adam/AdamW step on ``param``, in place.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
        \theta_{t+1} &= \theta_t (1 - \eta\lambda)_{\text{AdamW}}
            - \eta\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)

    With ``decoupled_weight_decay=False`` (Adam) the decay is coupled instead:
    :math:`g_t \leftarrow g_t + \lambda\theta_t`. With ``amsgrad`` the running maximum
    of :math:`v_t` replaces :math:`v_t` in the denominator.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg, exp_avg_sq: :math:`m` and :math:`v`, updated in place.
        max_exp_avg_sq: running max of :math:`v` (AMSGrad), or ``None``.
        step: the step number :math:`t` *after* incrementing (1 on the first step).
        lr, beta1, beta2, eps, weight_decay: as in the formula.
        amsgrad, maximize, decoupled_weight_decay: variants.
        cautious: zero the update's coordinates that disagree with the gradient
            (:func:`descent.functional.cautious`, Liang et al. 2024).

    Example:
        >>> p, g = torch.ones(2), torch.ones(2)
        >>> m, v = torch.zeros(2), torch.zeros(2)
        >>> adam(p, g, m, v, None, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
        >>> p  # the first Adam step moves each coordinate by about lr
        tensor([0.9000, 0.9000])
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("adam: amsgrad=True needs max_exp_avg_sq")
        if torch.is_grad_enabled():  # differentiable=True: out= does not support autograd
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq))  # maximum saves its inputs
        else:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    if cautious:
        param.add_(_cautious(exp_avg / denom, grad), alpha=-lr / bias_correction1)
    else:
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
