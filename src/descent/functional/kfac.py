"""K-FAC (Martens & Grosse, 2015; Grosse & Martens, 2016): Kronecker factors and preconditioning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor

__all__ = ["linear_rows", "conv2d_rows", "input_factor", "output_factor", "factor_eigen", "kfac_precondition"]


def linear_rows(x: Tensor) -> tuple[Tensor, int]:
    """Rows of a Linear layer's input ``(B, *, d)`` as ``(B·L, d)``, and ``B``."""
    return x.reshape(-1, x.shape[-1]), (x.shape[0] if x.ndim > 1 else 1)


def conv2d_rows(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int]) -> tuple[Tensor, int]:
    """Patches of a Conv2d input ``(B, C, H, W)`` as rows ``(B·L, C·kh·kw)`` (L output positions), and ``B``."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    cols = nnf.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), x.shape[0]


def input_factor(rows: Tensor, bias: bool) -> Tensor:
    r""":math:`A = \frac{1}{N}\sum_n \bar a_n \bar a_n^\top`, with :math:`\bar a = (a, 1)` when the layer has a bias.

    Example:
        >>> input_factor(torch.ones(4, 2), bias=True)
        tensor([[1., 1., 1.],
                [1., 1., 1.],
                [1., 1., 1.]])
    """
    if bias:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows.T @ rows / max(rows.shape[0], 1)


def output_factor(grad_rows: Tensor, batch: int) -> Tensor:
    r""":math:`G = B\sum_n g_n g_n^\top` from the loss gradients w.r.t. the layer's output rows.

    For a loss averaged over a batch of :math:`B` examples with :math:`L` rows each
    (sequence positions, conv output positions), this is :math:`L\cdot\mathrm{mean}_n
    (Bg_n)(Bg_n)^\top`: per-example gradients, with the spatial sum of KFC
    (Grosse & Martens 2016) folded into this factor.
    """
    return batch * (grad_rows.T @ grad_rows)


def factor_eigen(factor: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvectors and (clamped, >= 0) eigenvalues of a symmetric factor, computed in float64."""
    f64 = factor.to(torch.float64)
    evals, evecs = torch.linalg.eigh((f64 + f64.T) / 2)
    return evecs.to(factor.dtype), evals.clamp(min=0).to(factor.dtype)


def kfac_precondition(grad_matrix: Tensor, QA: Tensor, dA: Tensor, QG: Tensor, dG: Tensor,
                      damping: float) -> Tensor:
    r""":math:`(G\otimes A + \lambda I)^{-1}\,\mathrm{vec}(\nabla W)` in the factors' eigenbases.

    .. math::
        V = Q_G^\top \nabla W\, Q_A,\qquad V_{ij} \leftarrow V_{ij} / (d_{G,i} d_{A,j} + \lambda),
        \qquad \tilde\nabla W = Q_G V Q_A^\top

    ``grad_matrix`` is ``(out, in[+1])`` (the bias as the last column).

    Example:
        >>> I = torch.eye(2)
        >>> kfac_precondition(torch.ones(2, 2), I, torch.full((2,), 2.0), I, torch.full((2,), 0.5), 0.0)
        tensor([[1., 1.],
                [1., 1.]])
    """
    V = QG.T @ grad_matrix @ QA
    V = V / (dG[:, None] * dA[None, :] + damping)
    return QG @ V @ QA.T
