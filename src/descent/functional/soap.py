"""SOAP (Vyas et al., 2024): Adam run in the eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .cautious import cautious as _cautious

__all__ = ["soap", "soap_nd", "soap_shape", "soap_matrix_view", "soap_eigenbasis"]


def soap_matrix_view(t: Tensor) -> Tensor:
    """The 2-D view :func:`soap` preconditions: ``(shape[0], prod(rest))`` (a 1-D tensor stays 1-D)."""
    return t.reshape(t.shape[0], -1) if t.ndim > 2 else t


def soap_shape(shape: Sequence[int], max_precond_dim: int, merge_dims: bool = False) -> tuple[int, ...]:
    """The shape :func:`soap_nd` preconditions, one basis per dimension of at most ``max_precond_dim``.

    Without ``merge_dims`` the tensor's own shape. With it (tensors of 2 or more dimensions), as
    the authors' ``merge_dims``: consecutive dimensions are merged while their product stays
    <= ``max_precond_dim``; a dimension that does not fit starts a new group, and groups of size 1
    are dropped (pytorch-optimizer's ``merge_small_dims`` keeps a leading 1 before a dimension over
    the limit and gives ``[1]`` when everything merges into one dimension).

    Example:
        >>> soap_shape((64, 32, 3, 3), 10000, merge_dims=True)
        (6144, 3)
        >>> soap_shape((4, 3, 2, 2), 8, merge_dims=True), soap_shape((4, 3, 2, 2), 8)
        ((4, 6, 2), (4, 3, 2, 2))
    """
    shape = tuple(int(n) for n in shape)
    if not merge_dims or len(shape) < 2:
        return shape
    out: list[int] = []
    run = 1
    for n in shape:
        if run * n <= max_precond_dim:
            run *= n
        elif run > 1:
            out.append(run)
            run = n
        else:
            out.append(n)
    if run > 1 or not out:
        out.append(run)
    return tuple(out)


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


def _rotate(x: Tensor, qs: Sequence[Tensor | None], back: bool) -> Tensor:
    """``x`` times each basis along its dimension (``Q^T`` forward, ``Q`` back); None: the identity.

    Dimension 0 as ``Q^T X`` on the ``(n_0, rest)`` view and the others as ``X Q`` on the last axis,
    so a matrix is rotated by exactly the products ``Q_L^T X Q_R`` (and back ``Q_L X Q_R^T``).
    """
    for d, q in enumerate(qs):
        if q is None:
            continue
        if d == 0:
            x = ((q if back else q.mT) @ x.reshape(x.shape[0], -1)).reshape(x.shape)
        else:
            x = (x.movedim(d, -1) @ (q.mT if back else q)).movedim(-1, d)
    return x


def _statistic(g: Tensor, d: int) -> Tensor:
    """``G_(d) G_(d)^T``: the gradient's mode-``d`` unfolding times its transpose."""
    x = g.movedim(d, 0).reshape(g.shape[d], -1)
    return x @ x.mT


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
    :class:`descent.SOAP` steps tensors with more than 2 dimensions with :func:`soap_nd`, one
    basis per dimension, instead of this matrix view.

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
    shape = soap_matrix_view(param).shape
    soap_nd(param, grad, exp_avg, exp_avg_sq, (gg_left, gg_right)[:len(shape)],
            (q_left, q_right)[:len(shape)], shape=shape, step=step, lr=lr,
            beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
            precondition_frequency=precondition_frequency, correct_bias=correct_bias, cautious=cautious,
            maximize=maximize)


def soap_nd(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    gg: Sequence[Tensor | None],
    q: Sequence[Tensor | None],
    *,
    shape: Sequence[int] | None = None,
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
    r"""One SOAP step on ``param`` viewed as ``shape``, one basis per dimension, in place.

    :func:`soap` with :math:`k` bases instead of two, as the authors' code preconditions a
    tensor of any order: for each dimension :math:`d` of ``shape`` with a basis,
    :math:`L_d \leftarrow \beta_s L_d + (1-\beta_s) G_{(d)} G_{(d)}^\top` (the mode-:math:`d`
    unfolding), and the rotation is :math:`G' = G \times_1 Q_1^\top \cdots \times_k Q_k^\top`;
    everything else (first step, refresh, bias correction, decay) as :func:`soap`. On a matrix
    with ``shape`` its own shape this is :func:`soap` exactly (the same products in the same order).

    Args:
        param, grad, exp_avg: as :func:`soap`; ``exp_avg_sq`` (rotated coordinates) must be contiguous
            (it is updated through its ``shape`` view).
        gg, q: :math:`L_d` and :math:`Q_d` per dimension of ``shape`` (``None``: no basis, the identity),
            updated in place.
        shape: the shape preconditioned (default ``param.shape``; e.g. :func:`soap_shape` with ``merge_dims``).
        step, lr, beta1, beta2, shampoo_beta, eps, weight_decay, precondition_frequency, correct_bias,
        cautious, maximize: as :func:`soap`.

    Example:
        >>> p, g = torch.ones(2, 3, 2), torch.arange(12.0).reshape(2, 3, 2)
        >>> m, v = torch.zeros(2, 3, 2), torch.zeros(2, 3, 2)
        >>> gg = [torch.zeros(n, n) for n in p.shape]
        >>> q = [torch.zeros(n, n) for n in p.shape]
        >>> kw = dict(lr=0.1, beta1=0.9, beta2=0.95, shampoo_beta=0.95, eps=1e-8)
        >>> soap_nd(p, g, m, v, gg, q, step=1, **kw)  # collects statistics only
        >>> soap_nd(p, g, m, v, gg, q, step=2, **kw)
        >>> [tuple(x.shape) for x in q], bool((p < 1).any())
        ([(2, 2), (3, 3), (2, 2)], True)
    """
    shape = tuple(param.shape if shape is None else shape)
    if len(gg) != len(shape) or len(q) != len(shape):
        raise ValueError(f"Invalid gg/q for shape {shape}: {len(gg)} and {len(q)} bases (one per dimension)")
    g = -grad if maximize else grad
    # the rotations run in the statistics' dtype (float32 for bf16/fp16 parameters)
    cd = next((t.dtype for t in gg if t is not None), param.dtype)
    # contiguous: the statistics of a rank-deficient G have an arbitrary null-space basis, so the
    # products must not depend on the gradient's memory layout (strided grads give the same numbers)
    gm = g.reshape(shape).to(cd).contiguous()
    s = step - 1 if any(t is not None for t in q) else step  # updates so far
    if s >= 1 and param.numel():
        exp_avg.lerp_(g, 1 - beta1)
        m = exp_avg.reshape(shape).to(cd).contiguous()
        v = exp_avg_sq.view(shape)
        gr = _rotate(gm, q, False).to(v.dtype)
        v.mul_(beta2).addcmul_(gr, gr, value=1 - beta2)
        direction = _rotate(_rotate(m, q, False) / v.to(cd).sqrt().add_(eps), q, True)
        if cautious:
            direction = _cautious(direction, gm)
        size = lr * math.sqrt(1 - beta2**s) / (1 - beta1**s) if correct_bias else lr
        param.add_(direction.reshape(param.shape).to(param.dtype), alpha=-size)
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
    for dim, (gg_d, q_d) in enumerate(zip(gg, q)):
        if gg_d is None or q_d is None:
            continue
        gg_d.lerp_(_statistic(gm, dim), 1 - shampoo_beta)
        if step == 1:
            q_d.copy_(soap_eigenbasis(gg_d))
        elif (step - 1) % precondition_frequency == 0:
            _refresh(gg_d, q_d, exp_avg_sq.view(shape), dim)
