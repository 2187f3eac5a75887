"""Per-sample losses of the linear estimators, as scikit-learn's ``SGDClassifier``/``SGDRegressor`` define them.

Each function takes the decision values ``p`` and targets ``y`` (``y`` in ``{-1, +1}``
for classification) of the same shape and returns the elementwise loss:

=============================  ===================================================================
``log_loss``                   :math:`\\log(1 + e^{-yp})`
``hinge``                      :math:`\\max(0, 1 - yp)`
``squared_hinge``              :math:`\\max(0, 1 - yp)^2`
``perceptron``                 :math:`\\max(0, -yp)`
``modified_huber``             :math:`\\max(0, 1 - yp)^2` if :math:`yp \\ge -1`, else :math:`-4yp`
``squared_error``              :math:`\\tfrac12 (p - y)^2`
``huber``                      :math:`\\tfrac12 r^2` if :math:`|r| \\le \\epsilon`, else :math:`\\epsilon|r| - \\tfrac12\\epsilon^2`
``epsilon_insensitive``        :math:`\\max(0, |p - y| - \\epsilon)`
``squared_epsilon_insensitive`` :math:`\\max(0, |p - y| - \\epsilon)^2`
=============================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CLASSIFICATION_LOSSES", "REGRESSION_LOSSES", "get_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _hinge(threshold: float, power: int = 1) -> LossFn:
    # torch.where, not relu: at the kink the gradient is -y, as scikit-learn's
    # ``z <= threshold`` (relu'(0) = 0 would leave the perceptron stuck at w = 0).
    def loss(p: Tensor, y: Tensor) -> Tensor:
        margin = threshold - y * p
        active = torch.where(y * p <= threshold, margin, torch.zeros_like(margin))
        return active if power == 1 else active ** power
    return loss


def _modified_huber(p: Tensor, y: Tensor) -> Tensor:
    z = p * y
    return torch.where(z >= -1.0, F.relu(1.0 - z) ** 2, -4.0 * z)


def _huber(eps: float) -> LossFn:
    def loss(p: Tensor, y: Tensor) -> Tensor:
        r = (p - y).abs()
        return torch.where(r <= eps, 0.5 * r * r, eps * r - 0.5 * eps * eps)
    return loss


CLASSIFICATION_LOSSES: dict[str, Callable[[float], LossFn]] = {
    "log_loss": lambda eps: lambda p, y: F.softplus(-y * p),
    "hinge": lambda eps: _hinge(1.0),
    "squared_hinge": lambda eps: _hinge(1.0, 2),
    "perceptron": lambda eps: _hinge(0.0),
    "modified_huber": lambda eps: _modified_huber,
}

REGRESSION_LOSSES: dict[str, Callable[[float], LossFn]] = {
    "squared_error": lambda eps: lambda p, y: 0.5 * (p - y) ** 2,
    "huber": _huber,
    "epsilon_insensitive": lambda eps: lambda p, y: F.relu((p - y).abs() - eps),
    "squared_epsilon_insensitive": lambda eps: lambda p, y: F.relu((p - y).abs() - eps) ** 2,
}


def get_loss(name: str, epsilon: float, *, classification: bool) -> LossFn:
    """The loss function called ``name``; a classifier also accepts the regression losses (as scikit-learn).

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> f = get_loss("hinge", 0.1, classification=True)
        >>> f(torch.tensor([0.5]), torch.tensor([1.0]))
        tensor([0.5000])
    """
    table = dict(CLASSIFICATION_LOSSES, **REGRESSION_LOSSES) if classification else REGRESSION_LOSSES
    if name not in table:
        raise ValueError(f"Invalid loss: {name!r} (must be one of {', '.join(table)})")
    return table[name](float(epsilon))
