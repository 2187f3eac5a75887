"""Cautious masking (Liang et al., 2024): drop the update's coordinates that disagree with the gradient."""

from __future__ import annotations

from torch import Tensor


def cautious(update: Tensor, grad: Tensor) -> Tensor:
    r"""Return the cautious version of a momentum ``update`` (a new tensor).

    .. math::
        \phi = \mathbb{1}[u \odot g > 0],\qquad
        \tilde u = u \odot \phi \cdot \frac{n}{\sum_i \phi_i + 1}

    where :math:`n` is the number of elements: coordinates whose update points against
    the current gradient are zeroed and the rest are rescaled so the update keeps its
    size on average (the ``+1`` of the authors' C-Optim code keeps the division safe
    when every coordinate disagrees). ``update`` is the direction the parameter moves
    *against* (``param -= lr * update``), so it is compared with the gradient itself.

    Args:
        update: the momentum-based update (not modified).
        grad: the current gradient (not modified), same shape.

    References:
        Liang, Chen, Liu & Liu (2024), "Cautious Optimizers: Improving Training with
        One Line of Code", Algorithm 1; github.com/kyleliang919/C-Optim.

    Example:
        >>> import torch
        >>> cautious(torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, 1.0]))
        tensor([1., -0., 2.])
    """
    mask = (update * grad > 0).to(update.dtype)
    scale = mask.numel() / (float(mask.sum()) + 1.0)
    return update * mask * scale
