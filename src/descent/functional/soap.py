"""SOAP (Vyas et al., 2024): Adam run in the eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cautious import cautious as _cautious

__all__ = ["soap", "soap_matrix_view", "soap_eigenbasis"]


def soap_matrix_view(t: Tensor) -> Tensor:
    """The 2-D view SOAP preconditions: ``(shape[0], prod(rest))`` (a 1-D tensor stays 1-D)."""
    return t.reshape(t.shape[0], -1) if t.ndim > 2 else t


def soap_eigenbasis(gg: Tensor) -> Tensor:
    """Eigenvectors of a symmetric PSD statistic, columns by decreasing eigenvalue (in gg's dtype)."""
    eye = torch.eye(gg.shape[0], dtype=gg.dtype, device=gg.device)
    _, q = torch.linalg.eigh(gg + 1e-30 * eye)
    return q.flip(1)


def _refresh(gg: Tensor, q: Tensor, exp_avg_sq: Tensor, dim: int) -> None:
    """One power-iteration + QR step of the eigenbasis, columns sorted by estimated eigenvalue."""
    order = torch.argsort(torch.diagonal(q.mT @ gg @ q), descending=True)
    exp_avg_sq.copy_(exp_avg_sq.index_select(dim, order))
    q.copy_(torch.linalg.qr(gg @ q[:, order]).Q)


def _rotate(x: Tensor, q_left: Tensor | None, q_right: Tensor | None, back: bool) -> Tensor:
    if q_left is not None:
        x = q_left @ x if back else q_left.mT @ x
    if q_right is not None:
        x = x @ q_right.mT if back else x @ q_right
    return x


def soap(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    gg_left: Tensor | None,
    gg_right: Tensor | None,
    q_left: Tensor | None,
    q_right: Tensor | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    shampoo_beta: float,
    eps: float,
    weight_decay: float = 0.0,
    precondition_frequency: int = 10,
    correct_bias: bool = True,
    cautious: bool = False,
    maximize: bool = False,
) -> None:
    r"""One SOAP step on ``param``, in place.

    With :math:`G` the gradient viewed as a matrix (:func:`soap_matrix_view`),
    :math:`L \leftarrow \beta_s L + (1-\beta_s) G G^\top`,
    :math:`R \leftarrow \beta_s R + (1-\beta_s) G^\top G` and :math:`Q_L, Q_R` their
    eigenbases:

    .. math::
        G' = Q_L^\top G Q_R,\quad M \leftarrow \beta_1 M + (1-\beta_1) G,\quad
        V \leftarrow \beta_2 V + (1-\beta_2) G'^{\odot 2} \\
        \theta \leftarrow \theta - \eta\frac{\sqrt{1-\beta_2^s}}{1-\beta_1^s}\,
            Q_L\,\frac{Q_L^\top M Q_R}{\sqrt{V} + \epsilon}\,Q_R^\top,\qquad
        \theta \leftarrow \theta(1 - \eta\lambda)

    i.e. Adam in the rotated coordinates (the momentum is rotated, the second moment
    lives there). For a tensor with a basis the first call (``step == 1``) only
    collects :math:`L, R` and takes their eigenbases (no parameter update, as the
    authors' code: the current gradient never projects itself) and :math:`s = t - 1`
    counts the updates; a tensor without one (see below) runs Adam from the first call
    (:math:`s = t`; the authors' code skips its first step too). After each update the
    statistics take :math:`G` and every ``precondition_frequency`` updates the bases are
    refreshed by one power iteration and a QR decomposition, reordering :math:`V` to match.
    A side without a basis (``q_left``/``q_right`` None: a 1-D tensor or a dimension above
    the size limit) is the identity, so 1-D tensors run plain Adam.

    Args:
        param: the parameter, updated in place.
        grad: its gradient (not modified).
        exp_avg, exp_avg_sq: :math:`M` (original coordinates) and :math:`V` (rotated).
        gg_left, gg_right, q_left, q_right: :math:`L, R, Q_L, Q_R` or None, updated in place.
        step: :math:`t` after incrementing (1 on the first call).
        lr, beta1, beta2, eps, weight_decay: as in the formula.
        shampoo_beta: :math:`\beta_s` of the statistics.
        precondition_frequency: refresh the bases every this many updates.
        correct_bias: Adam's bias correction of the step size.
        cautious: mask the direction (original coordinates) with :func:`descent.functional.cautious`.
        maximize: ascend instead of descend.

    References:
        Vyas et al. (2024), "SOAP: Improving and Stabilizing Shampoo using Adam",
        Algorithm 3; github.com/nikhilvyas/SOAP.

    Example:
        >>> p, g = torch.ones(2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> m, v = torch.zeros(2, 2), torch.zeros(2, 2)
        >>> L, R, QL, QR = (torch.zeros(2, 2) for _ in range(4))
        >>> kw = dict(lr=0.1, beta1=0.9, beta2=0.95, shampoo_beta=0.95, eps=1e-8)
        >>> soap(p, g, m, v, L, R, QL, QR, step=1, **kw)  # collects statistics only
        >>> soap(p, g, m, v, L, R, QL, QR, step=2, **kw)
        >>> p.round(decimals=2)  # each rotated coordinate moved by lr
        tensor([[0.9500, 0.8400],
                [0.8700, 1.0500]])
    """
    g = -grad if maximize else grad
    # the rotations run in the statistics' dtype (float32 for bf16/fp16 parameters)
    cd = next((t.dtype for t in (gg_left, gg_right) if t is not None), param.dtype)
    # contiguous: the statistics of a rank-deficient G have an arbitrary null-space basis, so the
    # products must not depend on the gradient's memory layout (strided grads give the same numbers)
    gm = soap_matrix_view(g).to(cd).contiguous()
    s = step - 1 if (q_left is not None or q_right is not None) else step  # updates so far
    if s >= 1 and param.numel():
        exp_avg.lerp_(g, 1 - beta1)
        m = soap_matrix_view(exp_avg).to(cd).contiguous()
        v = soap_matrix_view(exp_avg_sq)
        gr = _rotate(gm, q_left, q_right, False).to(v.dtype)
        v.mul_(beta2).addcmul_(gr, gr, value=1 - beta2)
        direction = _rotate(_rotate(m, q_left, q_right, False) / v.to(cd).sqrt().add_(eps), q_left, q_right, True)
        if cautious:
            direction = _cautious(direction, gm)
        size = lr * math.sqrt(1 - beta2**s) / (1 - beta1**s) if correct_bias else lr
        param.add_(direction.reshape(param.shape).to(param.dtype), alpha=-size)
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
    for gg, q, dim in ((gg_left, q_left, 0), (gg_right, q_right, 1)):
        if gg is None or q is None:
            continue
        gg.lerp_(gm @ gm.mT if dim == 0 else gm.mT @ gm, 1 - shampoo_beta)
        if step == 1:
            q.copy_(soap_eigenbasis(gg))
        elif (step - 1) % precondition_frequency == 0:
            _refresh(gg, q, soap_matrix_view(exp_avg_sq), dim)
