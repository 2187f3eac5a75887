"""The closed-form least-squares solution: when not to use SGD.

For linear regression with a few thousand features or fewer, the normal equation
:math:`(X^\\top X + \\alpha I) w = X^\\top y` gives the exact minimizer in one
:math:`O(nd^2 + d^3)` solve; gradient descent only approaches it. SGD earns its place
when :math:`d` is large, the data does not fit in memory, or the model is not linear.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._core import add_intercept, check_problem

__all__ = ["normal_equation"]


def normal_equation(X: Any, y: Any, *, fit_intercept: bool = True, alpha: float = 0.0) -> np.ndarray:
    """Least-squares (ridge with ``alpha > 0``) weights, the intercept last when ``fit_intercept``.

    Minimizes :math:`\\|Xw - y\\|^2 + \\alpha\\|w\\|^2` (the intercept is not penalized). With
    ``alpha=0`` it uses ``np.linalg.lstsq`` (an SVD), which also handles a rank-deficient
    :math:`X` (minimum-norm solution) instead of inverting :math:`X^\\top X`.

    Example:
        >>> X = np.array([[0.0], [1.0], [2.0]]); y = np.array([1.0, 3.0, 5.0])
        >>> np.round(normal_equation(X, y), 6)
        array([2., 1.])
    """
    X, y = check_problem(X, y, "linear")
    if alpha < 0:
        raise ValueError(f"Invalid alpha: {alpha} (must be >= 0)")
    if fit_intercept:
        X = add_intercept(X)
    if alpha == 0:
        return np.linalg.lstsq(X, y, rcond=None)[0]
    penalty = alpha * np.eye(X.shape[1])
    if fit_intercept:
        penalty[-1, -1] = 0.0
    return np.linalg.solve(X.T @ X + penalty, X.T @ y)
