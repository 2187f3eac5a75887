"""Adafactor (Shazeer & Stern, 2018): factored second moments, relative step, update clipping."""

from __future__ import annotations

import math

from torch import Tensor


def adafactor_lr(step: int, lr: float | None, *, relative_step: bool, warmup_init: bool) -> float:
    r"""The step size :math:`\rho_t`: ``min(1e-2, 1/sqrt(t))`` (``min(1e-6 t, 1/sqrt(t))`` with
    ``warmup_init``) when ``relative_step``, else ``lr``.

    Example:
        >>> adafactor_lr(400, None, relative_step=True, warmup_init=False)
        0.01
        >>> adafactor_lr(10_000, None, relative_step=True, warmup_init=False)
        0.01
    """
    if not relative_step:
        if lr is None:
            raise ValueError("Invalid lr: None (an explicit lr is needed when relative_step=False)")
        return float(lr)
    cap = 1e-6 * step if warmup_init else 1e-2
    return min(cap, 1.0 / math.sqrt(step))


def _rms(t: Tensor) -> float:
    return float(t.norm()) / math.sqrt(t.numel())


def adafactor(
    param: Tensor,
    grad: Tensor,
    row_var: Tensor | None,
    col_var: Tensor | None,
    variance: Tensor | None,
    exp_avg: Tensor | None,
    *,
    step: int,
    lr: float,
    eps1: float,
    eps2: float,
    clip_threshold: float,
    decay_rate: float,
    beta1: float | None,
    weight_decay: float = 0.0,
    scale_parameter: bool = True,
    maximize: bool = False,
) -> None:
    r"""One Adafactor step on ``param``, in place.

    .. math::
        \hat\beta_{2t} = 1 - t^{c},\quad
        R \leftarrow \hat\beta_{2t} R + (1-\hat\beta_{2t})\,\mathrm{mean}_{-1}(g^2+\epsilon_1),\quad
        C \leftarrow \hat\beta_{2t} C + (1-\hat\beta_{2t})\,\mathrm{mean}_{-2}(g^2+\epsilon_1) \\
        \hat V = \frac{R\,C}{\mathrm{mean}(R)}\ (\text{factored, ndim} \ge 2),\quad
        \hat V \leftarrow \hat\beta_{2t}\hat V + (1-\hat\beta_{2t})(g^2+\epsilon_1)\ (\text{vectors}) \\
        U = g/\sqrt{\hat V},\quad \hat U = U/\max(1, \mathrm{RMS}(U)/d),\quad
        \alpha = \rho_t \max(\epsilon_2, \mathrm{RMS}(\theta))\ (\rho_t \text{ without scale\_parameter}) \\
        m \leftarrow \beta_1 m + (1-\beta_1)\alpha\hat U\ (\text{with } \beta_1),\quad
        \theta \leftarrow \theta(1-\lambda\alpha) - (m \text{ or } \alpha\hat U)

    Parameters with two or more dimensions are factored over their last two; the
    statistics are means (not sums), as in the reference implementations.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        row_var, col_var: :math:`R` (shape ``[..., n, 1]``) and :math:`C` (``[..., 1, m]``)
            for factored parameters, else ``None``.
        variance: :math:`\hat V` for vectors, else ``None``.
        exp_avg: the momentum when ``beta1`` is set, else ``None``.
        step: :math:`t` after incrementing. lr: :math:`\rho_t` (see :func:`adafactor_lr`).
        eps1, eps2, clip_threshold, decay_rate, beta1, weight_decay: :math:`\epsilon_1,
            \epsilon_2, d, c, \beta_1, \lambda`.
        scale_parameter: multiply the step by :math:`\max(\epsilon_2, \mathrm{RMS}(\theta))`.
        maximize: ascend instead of descend.

    Example:
        >>> import torch
        >>> p, g = torch.ones(2, 2), torch.ones(2, 2)
        >>> r, c = torch.zeros(2, 1), torch.zeros(1, 2)
        >>> adafactor(p, g, r, c, None, None, step=1, lr=0.01, eps1=1e-30, eps2=1e-3,
        ...           clip_threshold=1.0, decay_rate=-0.8, beta1=None)
        >>> p
        tensor([[0.9900, 0.9900],
                [0.9900, 0.9900]])
    """
    if param.numel() == 0:
        return
    if maximize:
        grad = -grad
    beta2 = 1.0 - step**decay_rate
    g2 = grad * grad + eps1
    if row_var is not None and col_var is not None:
        row_var.mul_(beta2).add_(g2.mean(dim=-1, keepdim=True) * (1 - beta2))
        col_var.mul_(beta2).add_(g2.mean(dim=-2, keepdim=True) * (1 - beta2))
        r = row_var / row_var.mean(dim=-2, keepdim=True)
        update = grad * r.rsqrt() * col_var.rsqrt()
    elif variance is not None:
        variance.mul_(beta2).add_(g2 * (1 - beta2))
        update = grad * variance.rsqrt()
    else:
        raise ValueError("adafactor: needs row_var and col_var (factored) or variance (vectors)")
    update.div_(max(1.0, _rms(update) / clip_threshold))
    alpha = lr * max(eps2, _rms(param)) if scale_parameter else lr
    update.mul_(alpha)
    if beta1 is not None:
        if exp_avg is None:
            raise ValueError("adafactor: beta1 is set but exp_avg is None")
        exp_avg.mul_(beta1).add_(update * (1 - beta1))
        update = exp_avg
    if weight_decay != 0:
        param.mul_(1 - weight_decay * alpha)
    param.sub_(update)
