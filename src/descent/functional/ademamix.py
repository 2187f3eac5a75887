"""AdEMAMix (Pagliardini et al., 2024): Adam plus a slow momentum, with warm-up schedulers."""

from __future__ import annotations

import math

from torch import Tensor

from .cautious import cautious as _cautious


def ademamix_schedule(step: int, *, alpha: float, beta1: float, beta3: float,
                      warmup: int | None) -> tuple[float, float]:
    r"""The warmed-up :math:`(\alpha_t, \beta_{3,t})` of AdEMAMix at ``step``.

    .. math::
        \alpha_t = \min\!\left(\frac{t\,\alpha}{T}, \alpha\right),\qquad
        \beta_{3,t} = \min\!\left(\exp\frac{\ln\beta_1 \ln\beta_3}
            {(1-t/T)\ln\beta_3 + (t/T)\ln\beta_1},\ \beta_3\right)

    (the paper's Eq. 3 and Appendix A.1: :math:`\beta_{3,t}` grows so that the
    half-life of the slow momentum grows linearly from that of :math:`\beta_1` to that
    of :math:`\beta_3`). With ``warmup=None`` both are constant.

    Example:
        >>> ademamix_schedule(50, alpha=2.0, beta1=0.9, beta3=0.9999, warmup=100)[0]
        1.0
    """
    if warmup is None or step >= warmup:
        return alpha, beta3
    s = step / warmup
    lb1, lb3 = math.log(beta1), math.log(beta3)
    beta3_t = math.exp(lb1 * lb3 / ((1 - s) * lb3 + s * lb1)) if beta1 > 0 else beta3
    return min(step * alpha / warmup, alpha), min(beta3_t, beta3)


def ademamix(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    exp_avg_slow: Tensor,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    weight_decay: float = 0.0,
    warmup: int | None = None,
    cautious: bool = False,
    maximize: bool = False,
) -> None:
    r"""One AdEMAMix step on ``param``, in place.

    .. math::
        m_1 &\leftarrow \beta_1 m_1 + (1-\beta_1) g,\quad
        m_2 \leftarrow \beta_{3,t} m_2 + (1-\beta_{3,t}) g,\quad
        \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \eta\left(\frac{m_1/(1-\beta_1^t) + \alpha_t m_2}
            {\sqrt{\nu/(1-\beta_2^t)} + \epsilon} + \lambda\theta\right)

    with :math:`(\alpha_t, \beta_{3,t})` from :func:`ademamix_schedule`. The slow
    momentum :math:`m_2` is not bias-corrected (as in the paper).

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg, exp_avg_sq, exp_avg_slow: :math:`m_1, \nu, m_2`, updated in place.
        step: :math:`t` after incrementing (1 on the first step).
        lr, beta1, beta2, beta3, alpha, eps, weight_decay: as in the formula.
        warmup: :math:`T_{\alpha,\beta_3}` of the schedulers, or None.
        cautious: mask the fast momentum with :func:`descent.functional.cautious`.
        maximize: ascend instead of descend.

    References:
        Pagliardini, Ablin & Grangier (2024), "The AdEMAMix Optimizer: Better, Faster,
        Older", Algorithm 1; github.com/apple/ml-ademamix.

    Example:
        >>> import torch
        >>> p, m, v, s = torch.ones(2), torch.zeros(2), torch.zeros(2), torch.zeros(2)
        >>> ademamix(p, torch.ones(2), m, v, s, step=1, lr=0.1, beta1=0.9, beta2=0.999,
        ...          beta3=0.9999, alpha=2.0, eps=1e-8)
        >>> p  # the slow momentum adds alpha * (1 - beta3) = 2e-4 on the first step
        tensor([0.9000, 0.9000])
    """
    if maximize:
        grad = -grad
    alpha_t, beta3_t = ademamix_schedule(step, alpha=alpha, beta1=beta1, beta3=beta3, warmup=warmup)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_slow.lerp_(grad, 1 - beta3_t)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    fast = _cautious(exp_avg, grad) if cautious else exp_avg
    update = (fast / (1 - beta1**step)).add_(exp_avg_slow, alpha=alpha_t).div_(denom)
    if weight_decay != 0:
        update.add_(param, alpha=weight_decay)
    param.add_(update, alpha=-lr)
