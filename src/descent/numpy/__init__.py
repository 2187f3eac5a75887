"""The textbook algorithms in plain NumPy: a teaching layer and float64 oracles.

Batch, stochastic and mini-batch gradient descent (sampling without replacement,
``ceil(N / k) * epochs`` iterations), momentum in both conventions, Nesterov, AdaGrad,
RMSprop, Adam with bias correction and AdamW, for linear and logistic regression; each
returns ``(weights, loss_history)``. Schedules are multipliers ``f(t)``; the normal
equation gives the exact least-squares answer. Each optimizer agrees with the descent
(torch) optimizer of the same name to float64 precision.

Example:
    >>> import numpy as np
    >>> from descent.numpy import minibatch_gd, normal_equation, schedules
    >>> X = np.random.default_rng(0).normal(size=(200, 2)); y = X @ [2.0, -1.0] + 0.5
    >>> w, history = minibatch_gd(X, y, lr=0.1, batch_size=20, epochs=50,
    ...                           schedule=schedules.cosine_annealing(500))
    >>> len(history), np.allclose(w, normal_equation(X, y), atol=1e-6)
    (500, True)
"""

from . import schedules
from ._core import (Result, add_intercept, descend, linear_loss_grad, logistic_loss_grad, minibatch_indices,
                    n_iterations)
from .closed_form import normal_equation
from .optimizers import (adagrad, adam, adamw, batch_gd, minibatch_gd, nesterov, rmsprop, sgd_momentum,
                         stochastic_gd)

__all__ = [
    "Result", "descend", "linear_loss_grad", "logistic_loss_grad", "minibatch_indices", "n_iterations",
    "add_intercept", "normal_equation", "schedules",
    "batch_gd", "stochastic_gd", "minibatch_gd", "sgd_momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
]
