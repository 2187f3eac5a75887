"""Shampoo (Gupta, Koren & Singer, 2018): one preconditioner per tensor dimension, blocked and grafted."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["matrix_inverse_root", "shampoo_blocks", "shampoo_dims", "shampoo"]

GRAFTING = ("adam", "sgd", None)


def matrix_inverse_root(A: Tensor, root: int, eps: float) -> Tensor:
    r""":math:`(A + \epsilon I)^{-1/r}` of a symmetric PSD matrix, computed in float64.

    Eigenvalues below zero (round-off) are clamped to zero before :math:`\epsilon` is added.

    Args:
        A: symmetric ``(n, n)``.
        root: :math:`r` (Shampoo uses :math:`2k` for an order-:math:`k` tensor).
        eps: :math:`\epsilon > 0`.

    Returns:
        The matrix in ``A``'s dtype.

    Example:
        >>> matrix_inverse_root(torch.diag(torch.tensor([16.0, 1.0])), 4, 0.0)
        tensor([[0.5000, 0.0000],
                [0.0000, 1.0000]])
    """
    A64 = A.to(torch.float64)
    A64 = (A64 + A64.mT) / 2
    evals, evecs = torch.linalg.eigh(A64)
    scale = (evals.clamp(min=0) + eps).pow(-1.0 / root)
    return ((evecs * scale) @ evecs.mT).to(A.dtype)


def shampoo_blocks(t: Tensor, block_size: int) -> list[Tensor]:
    """Views of ``t`` cut into blocks of at most ``block_size`` along every dimension (row-major order)."""
    blocks = [t]
    for dim in range(t.ndim):
        if t.shape[dim] > block_size:
            blocks = [piece for b in blocks for piece in b.split(block_size, dim=dim)]
    return blocks


def shampoo_dims(block: Tensor) -> list[int]:
    """The dimensions of ``block`` that get a preconditioner (those of size > 1)."""
    return [d for d in range(block.ndim) if block.shape[d] > 1]


def _precondition(gb: Tensor, roots: list[Tensor], dims: list[int]) -> Tensor:
    u = gb
    for dim, root in zip(dims, roots):
        u = torch.tensordot(root, u, dims=([1], [dim])).movedim(0, dim)
    return u


def shampoo(
    param: Tensor,
    grad: Tensor,
    preconditioners: list[Tensor],
    inv_roots: list[Tensor],
    exp_avg: Tensor,
    exp_avg_sq: Tensor | None,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-12,
    weight_decay: float = 0.0,
    update_freq: int = 10,
    block_size: int = 256,
    grafting: str | None = "adam",
    graft_eps: float = 1e-8,
    maximize: bool = False,
) -> None:
    r"""One Shampoo step on ``param``, in place.

    For each block :math:`G` of the gradient (cut at ``block_size`` along every
    dimension) and each of its :math:`k` dimensions of size > 1:

    .. math::
        L_i &\leftarrow \beta_2 L_i + (1-\beta_2)\, G_{(i)} G_{(i)}^\top, \qquad
        R_i = (L_i + \epsilon I)^{-1/(2k)} \ \text{(every ``update_freq`` steps, float64)} \\
        D &= G \times_1 R_1 \cdots \times_k R_k, \qquad
        D \leftarrow D\, \lVert A \rVert / \lVert D \rVert \ \text{(grafting, per block)} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) D, \qquad
        \theta \leftarrow \theta(1-\eta\lambda) - \eta\, m_t / (1-\beta_1^t)

    :math:`A` is the Adam direction :math:`g/(\sqrt{\hat v}+\epsilon_g)` (``"adam"``) or the
    gradient (``"sgd"``); ``None`` keeps Shampoo's own magnitude. Parameters with
    ``ndim < 2`` (or no dimension > 1) use the diagonal fallback :math:`D = g/(\sqrt{\hat v}+\epsilon_g)`.
    Roots are computed on step 1 and then every ``update_freq`` steps.

    Args:
        param: the parameter, updated in place. grad: its gradient (not modified).
        preconditioners, inv_roots: :math:`L_i` and :math:`R_i`, block by block, dimension
            by dimension (see :func:`shampoo_blocks`, :func:`shampoo_dims`), updated in place.
        exp_avg: :math:`m`. exp_avg_sq: :math:`v` (needed for ``"adam"`` and the diagonal case).
        step: :math:`t` after incrementing. Other arguments: as in the formula.

    Example:
        >>> p, g = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> L = [torch.zeros(2, 2), torch.zeros(2, 2)]; R = [torch.eye(2), torch.eye(2)]
        >>> shampoo(p, g, L, R, torch.zeros(2, 2), torch.zeros(2, 2), step=1, lr=0.1)
        >>> p.diagonal()  # equal steps for unequal gradients: the preconditioner whitened them
        tensor([-0.1000, -0.1000])
    """
    if param.numel() == 0:
        return
    g = -grad if maximize else grad
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    diagonal = param.ndim < 2 or not preconditioners
    adam_dir = None
    if diagonal or grafting == "adam":
        if exp_avg_sq is None:
            raise ValueError("shampoo: exp_avg_sq is needed for grafting='adam' and the diagonal fallback")
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(graft_eps)
        adam_dir = g / denom
    if diagonal:
        direction = adam_dir
    else:
        direction = _shampoo_direction(g, preconditioners, inv_roots, adam_dir if grafting == "adam" else g,
                                       grafting, step=step, beta2=beta2, eps=eps, update_freq=update_freq,
                                       block_size=block_size)
    exp_avg.lerp_(direction, 1 - beta1)
    param.add_(exp_avg, alpha=-lr / (1 - beta1**step))


def _shampoo_direction(g: Tensor, preconditioners: list[Tensor], inv_roots: list[Tensor], graft: Tensor,
                       grafting: str | None, *, step: int, beta2: float, eps: float, update_freq: int,
                       block_size: int) -> Tensor:
    refresh = (step - 1) % update_freq == 0
    direction = torch.empty_like(g)
    k = 0
    for gb, db, ab in zip(shampoo_blocks(g, block_size), shampoo_blocks(direction, block_size),
                          shampoo_blocks(graft, block_size)):
        dims = shampoo_dims(gb)
        if not dims:  # a 1x1 block: diagonal step on it
            db.copy_(ab)
            continue
        for j, dim in enumerate(dims):
            others = [d for d in range(gb.ndim) if d != dim]
            preconditioners[k + j].mul_(beta2).add_(torch.tensordot(gb, gb, dims=(others, others)),
                                                    alpha=1 - beta2)
            if refresh and bool(torch.isfinite(preconditioners[k + j]).all()):
                inv_roots[k + j].copy_(matrix_inverse_root(preconditioners[k + j], 2 * len(dims), eps))
        u = _precondition(gb, inv_roots[k:k + len(dims)], dims)
        if grafting is not None:
            norm = float(u.norm())
            u = u * (float(ab.norm()) / norm) if norm > 0 and math.isfinite(norm) else ab.clone()
        db.copy_(u)
        k += len(dims)
    if k != len(preconditioners):
        raise ValueError(f"shampoo: {len(preconditioners)} preconditioners for {k} blocked dimensions "
                         "(block_size changed mid-run?)")
    return direction
