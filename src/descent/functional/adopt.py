"""ADOPT (Taniguchi et al., 2024): Adam with the second moment taken one step late."""

from __future__ import annotations

from torch import Tensor

from .cautious import cautious as _cautious


def adopt(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decouple: bool = False,
    clip_exponent: float | None = 0.25,
    cautious: bool = False,
    maximize: bool = False,
) -> None:
    r"""One ADOPT step on ``param``, in place.

    .. math::
        t = 1:&\quad v_1 = g_1^2 \quad\text{(no parameter update)} \\
        t > 1:&\quad \hat g_t = \mathrm{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},
              \pm t^{c}\right),\quad m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat g_t \\
              &\quad \theta_t = \theta_{t-1} - \eta\, m_t,\quad
              v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    The gradient is normalized by the second moment *before* it enters the momentum,
    and that moment does not yet contain :math:`g_t`: this decorrelation is what gives
    ADOPT its convergence for any :math:`\beta_2`. The clip :math:`t^{c}` (``c=0.25``)
    is the authors' stabilizer (``clip_exponent=None`` turns it off). Weight decay is
    coupled (added to :math:`g_t`) by default, as in the authors' code, or decoupled
    (:math:`\theta \leftarrow \theta(1-\eta\lambda)`, also on the first step) with
    ``decouple=True``.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg, exp_avg_sq: :math:`m` and :math:`v`, updated in place.
        step: :math:`t` after incrementing (1 on the first step).
        lr, beta1, beta2, eps, weight_decay: as in the formula.
        decouple: decoupled instead of coupled weight decay.
        clip_exponent: :math:`c` of the clip :math:`t^c`, or None for no clip.
        cautious: mask the momentum with :func:`descent.functional.cautious`.
        maximize: ascend instead of descend.

    References:
        Taniguchi et al. (2024), "ADOPT: Modified Adam Can Converge with Any beta2 with
        the Optimal Rate", Algorithm 2; github.com/iShohei220/adopt.

    Example:
        >>> import torch
        >>> p, m, v = torch.ones(2), torch.zeros(2), torch.zeros(2)
        >>> adopt(p, torch.ones(2), m, v, step=1, lr=0.1, beta1=0.9, beta2=0.9999, eps=1e-6)
        >>> p, v  # the first step only initializes v
        (tensor([1., 1.]), tensor([1., 1.]))
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decouple:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    if step == 1:
        exp_avg_sq.addcmul_(grad, grad)
        return
    normed = grad / exp_avg_sq.sqrt().clamp_(min=eps)
    if clip_exponent is not None:
        clip = step**clip_exponent
        normed.clamp_(-clip, clip)
    exp_avg.lerp_(normed, 1 - beta1)
    update = _cautious(exp_avg, grad) if cautious else exp_avg
    param.add_(update, alpha=-lr)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
