"""The textbook optimizers in NumPy, each a short function returning ``(weights, loss_history)``.

Every function takes ``X, y`` and the keyword arguments of :func:`descent.numpy.descend`
(``epochs``, ``batch_size``, ``model="linear" | "logistic"``, ``fit_intercept``,
``schedule``, ``weight_decay``, ``w0``, ``seed``) and writes out its update rule in a
few lines. The hyperparameters and conventions are torch's, so each one is an oracle for
the descent optimizer of the same name (the tests compare them to float64 precision).

Example:
    >>> import numpy as np
    >>> from descent.numpy import adam
    >>> X = np.random.default_rng(0).normal(size=(100, 3)); y = X @ [1.0, -2.0, 0.5] + 3.0
    >>> w, history = adam(X, y, lr=0.1, epochs=200, batch_size=20)
    >>> np.round(w, 2)
    array([ 1. , -2. ,  0.5,  3. ])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._core import Result, descend

__all__ = ["batch_gd", "stochastic_gd", "minibatch_gd", "sgd_momentum", "nesterov", "adagrad", "rmsprop",
           "adam", "adamw"]


def _plain(w: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
    return w - lr * g


def batch_gd(X: Any, y: Any, lr: float = 0.01, **kw: Any) -> Result:
    """Batch gradient descent: one update per epoch on the full data, :math:`w \\leftarrow w - \\eta\\nabla L(w)`."""
    kw["batch_size"] = None
    return descend(X, y, _plain, lr=lr, **kw)


def stochastic_gd(X: Any, y: Any, lr: float = 0.01, **kw: Any) -> Result:
    """Stochastic gradient descent: one sample per update, N updates per epoch."""
    kw["batch_size"] = 1
    return descend(X, y, _plain, lr=lr, **kw)


def minibatch_gd(X: Any, y: Any, lr: float = 0.01, batch_size: int = 32, **kw: Any) -> Result:
    """Mini-batch gradient descent: :math:`\\lceil N/k\\rceil` updates per epoch (``descent.SGD``)."""
    return descend(X, y, _plain, lr=lr, batch_size=batch_size, **kw)


def sgd_momentum(X: Any, y: Any, lr: float = 0.01, momentum: float = 0.9, lr_inside: bool = False,
                 batch_size: int = 32, **kw: Any) -> Result:
    """Momentum (Polyak's heavy ball), in either of the two conventions of the textbooks.

    * ``lr_inside=False`` (torch's ``SGD``): :math:`v \\leftarrow \\mu v + g,\\ w \\leftarrow w - \\eta v`
    * ``lr_inside=True``: :math:`v \\leftarrow \\mu v + \\eta g,\\ w \\leftarrow w - v`
      (written also :math:`v \\leftarrow \\mu v - \\eta g,\\ w \\leftarrow w + v`)

    With a constant learning rate the two are the same algorithm (:math:`v_{in} = \\eta
    v_{out}`); with a schedule they differ: the first applies today's rate to the whole
    velocity, the second keeps each past gradient at the rate it was taken with.
    """
    v = None

    def step(w: np.ndarray, g: np.ndarray, lr_t: float) -> np.ndarray:
        nonlocal v
        if lr_inside:
            v = lr_t * g if v is None else momentum * v + lr_t * g
            return w - v
        v = g.copy() if v is None else momentum * v + g
        return w - lr_t * v

    return descend(X, y, step, lr=lr, batch_size=batch_size, **kw)


def nesterov(X: Any, y: Any, lr: float = 0.01, momentum: float = 0.9, batch_size: int = 32, **kw: Any) -> Result:
    """Nesterov momentum in the form torch uses (Sutskever et al. 2013):

    :math:`v \\leftarrow \\mu v + g,\\ w \\leftarrow w - \\eta (g + \\mu v)`.

    This is the "look-ahead" rule :math:`v \\leftarrow \\mu v - \\eta\\nabla L(w + \\mu v),\\
    w \\leftarrow w + v` rewritten in the variable :math:`w + \\mu v`, so only the gradient
    at the current weights is needed.
    """
    v = None

    def step(w: np.ndarray, g: np.ndarray, lr_t: float) -> np.ndarray:
        nonlocal v
        v = g.copy() if v is None else momentum * v + g
        return w - lr_t * (g + momentum * v)

    return descend(X, y, step, lr=lr, batch_size=batch_size, **kw)


def adagrad(X: Any, y: Any, lr: float = 0.01, eps: float = 1e-10, initial_accumulator_value: float = 0.0,
            batch_size: int = 32, **kw: Any) -> Result:
    """AdaGrad (Duchi et al. 2011): :math:`G \\leftarrow G + g^2,\\ w \\leftarrow w - \\eta g / (\\sqrt G + \\epsilon)`.

    Each coordinate's rate shrinks with its accumulated squared gradients, so the
    effective rate only decreases. (torch puts :math:`\\epsilon` outside the root.)
    """
    G = None

    def step(w: np.ndarray, g: np.ndarray, lr_t: float) -> np.ndarray:
        nonlocal G
        G = (np.full_like(w, initial_accumulator_value) if G is None else G) + g * g
        return w - lr_t * g / (np.sqrt(G) + eps)

    return descend(X, y, step, lr=lr, batch_size=batch_size, **kw)


def rmsprop(X: Any, y: Any, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, batch_size: int = 32,
            **kw: Any) -> Result:
    """RMSprop (Tieleman & Hinton 2012): an exponential average instead of AdaGrad's sum.

    :math:`s \\leftarrow \\alpha s + (1-\\alpha) g^2,\\ w \\leftarrow w - \\eta g / (\\sqrt s + \\epsilon)`
    (``alpha`` is torch's name for the decay :math:`\\gamma`).
    """
    s = None

    def step(w: np.ndarray, g: np.ndarray, lr_t: float) -> np.ndarray:
        nonlocal s
        s = (1 - alpha) * g * g if s is None else alpha * s + (1 - alpha) * g * g
        return w - lr_t * g / (np.sqrt(s) + eps)

    return descend(X, y, step, lr=lr, batch_size=batch_size, **kw)


def _adam_step(betas: tuple[float, float], eps: float, decoupled: float) -> Any:
    b1, b2 = betas
    m = v = None
    t = 0

    def step(w: np.ndarray, g: np.ndarray, lr_t: float) -> np.ndarray:
        nonlocal m, v, t
        t += 1
        if decoupled:
            w = w * (1 - lr_t * decoupled)  # AdamW: decay the weights, not the gradient
        m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
        v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)  # bias correction: m and v start at 0
        v_hat = v / (1 - b2**t)
        return w - lr_t * m_hat / (np.sqrt(v_hat) + eps)

    return step


def adam(X: Any, y: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         batch_size: int = 32, **kw: Any) -> Result:
    """Adam (Kingma & Ba 2015) with bias correction.

    .. math::
        m \\leftarrow \\beta_1 m + (1-\\beta_1) g,\\quad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
        w \\leftarrow w - \\eta\\,\\frac{m / (1-\\beta_1^t)}{\\sqrt{v / (1-\\beta_2^t)} + \\epsilon}

    ``weight_decay`` here is the coupled L2 of ``torch.optim.Adam``; see :func:`adamw`.
    """
    return descend(X, y, _adam_step(betas, eps, 0.0), lr=lr, batch_size=batch_size, **kw)


def adamw(X: Any, y: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, batch_size: int = 32, **kw: Any) -> Result:
    """AdamW (Loshchilov & Hutter 2019): Adam plus decoupled decay :math:`w \\leftarrow w(1 - \\eta\\lambda)`.

    The decay does not pass through :math:`m, v`, so every weight decays at the same
    relative rate whatever its gradient history (with Adam's coupled L2, weights with
    large gradients are barely regularized).
    """
    if weight_decay < 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
    return descend(X, y, _adam_step(betas, eps, float(weight_decay)), lr=lr, batch_size=batch_size, **kw)
