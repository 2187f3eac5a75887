"""Prodigy (Mishchenko & Defazio, 2024): Adam whose step size d is estimated on the fly."""

from __future__ import annotations

import torch
from torch import Tensor


def prodigy_accumulate(param: Tensor, grad: Tensor, p0: Tensor, s: Tensor, exp_avg: Tensor | None,
                       exp_avg_sq: Tensor, *, d: float, d0: float, dlr: float, beta1: float, beta2: float,
                       beta3: float, safeguard_warmup: bool = False) -> tuple[float, float]:
    r"""First half of a Prodigy step for one tensor: the moments and the d-estimate sums.

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1)\,d\,g,\qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\,d^2 g^2 \\
        s &\leftarrow \beta_3 s + \tfrac{d}{d_0}\,\eta_d\, g,\qquad
        \Delta r = \tfrac{d}{d_0}\,\eta_d\,\langle g, x_0 - x\rangle

    with :math:`\eta_d = d\,\eta\,(\text{bias correction})` (:math:`d` instead of
    :math:`\eta_d` in :math:`s` with ``safeguard_warmup``).

    Returns:
        ``(delta_numerator, sum |s|)``: this tensor's terms of :math:`r` and :math:`\|s\|_1`.
    """
    scale = (d / d0) * dlr
    delta = scale * float(torch.dot(grad.flatten(), (p0 - param).flatten())) if grad.numel() else 0.0
    if exp_avg is not None and beta1 > 0:
        exp_avg.mul_(beta1).add_(grad, alpha=d * (1 - beta1))
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
    s.mul_(beta3).add_(grad, alpha=(d / d0) * d if safeguard_warmup else scale)
    return delta, float(s.abs().sum()) if s.numel() else 0.0


def prodigy_d(d: float, d_max: float, numerator: float, denominator: float, *, d0: float, d_coef: float,
              growth_rate: float) -> tuple[float, float, float]:
    r"""The new step-size estimate :math:`d` from the accumulated sums.

    .. math::
        \hat d = c\,\frac{r}{\|s\|_1},\qquad d_{\max} \leftarrow \max(d_{\max}, \hat d),\qquad
        d \leftarrow \min(d_{\max},\ \rho\, d)

    (on the first growth from :math:`d_0`, :math:`d` jumps to :math:`\max(d, \hat d)` first),
    with :math:`\rho` the growth-rate bound (``inf``: none).

    Returns:
        ``(d, d_max, d_hat)``.

    Example:
        >>> prodigy_d(1e-6, 1e-6, 2.0, 1.0, d0=1e-6, d_coef=1.0, growth_rate=float("inf"))
        (2.0, 2.0, 2.0)
    """
    d_hat = d_coef * numerator / denominator
    if d == d0:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)
    return d, d_max, d_hat


def prodigy_apply(param: Tensor, grad: Tensor, exp_avg: Tensor | None, exp_avg_sq: Tensor, *, d: float, dlr: float,
                  eps: float, beta1: float, weight_decay: float = 0.0, decouple: bool = True) -> None:
    r"""Second half of a Prodigy step for one tensor: the Adam-form update with step :math:`\eta_d`.

    .. math::
        \theta \leftarrow \theta(1 - \lambda\eta_d) - \eta_d\,\frac{m}{\sqrt{v} + d\,\epsilon}

    (:math:`d\,g` replaces :math:`m` when :math:`\beta_1 = 0`; the decay factor only with
    ``decouple``).

    References:
        Mishchenko & Defazio (2024), "Prodigy: An Expeditiously Adaptive Parameter-Free
        Learner", Algorithm 4 (Adam version); github.com/konstmish/prodigy.
    """
    denom = exp_avg_sq.sqrt().add_(d * eps)
    if weight_decay != 0 and decouple:
        param.add_(param, alpha=-weight_decay * dlr)
    if beta1 > 0 and exp_avg is not None:
        param.addcdiv_(exp_avg, denom, value=-dlr)
    else:
        param.addcdiv_(grad, denom, value=-dlr * d)
