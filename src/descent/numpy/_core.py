"""The pieces every NumPy optimizer shares: the two problems, the mini-batches, the loop.

* :func:`linear_loss_grad` — mean squared error :math:`\\frac1n\\|Xw - y\\|^2` and its
  gradient :math:`\\frac2n X^\\top(Xw - y)` (the textbook's linear regression).
* :func:`logistic_loss_grad` — mean log loss for :math:`y \\in \\{0, 1\\}`,
  :math:`\\frac1n\\sum \\log(1 + e^{z_i}) - y_i z_i` with :math:`z = Xw`, and its gradient
  :math:`\\frac1n X^\\top(\\sigma(z) - y)`.
* :func:`minibatch_indices` — every epoch draws a fresh permutation and cuts it into
  batches of ``batch_size`` (sampling without replacement; the last batch may be
  smaller), so an epoch has :math:`\\lceil N / k\\rceil` iterations and a run
  :math:`\\lceil N / k\\rceil \\times` epochs (:func:`n_iterations`).
* :func:`descend` — the loop: for each batch, loss and gradient at the current weights,
  then ``w = step(w, g, lr_t)`` with :math:`\\eta_t = \\eta \\cdot` ``schedule(t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

__all__ = ["Result", "linear_loss_grad", "logistic_loss_grad", "minibatch_indices", "n_iterations",
           "descend", "add_intercept", "check_problem"]

Step = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


class Result(NamedTuple):
    """What every optimizer returns: ``weights, loss_history = adam(X, y)``.

    Attributes:
        weights: the final weights (with the intercept last when ``fit_intercept``).
        loss_history: the mini-batch loss at each iteration, before that iteration's step.
    """

    weights: np.ndarray
    loss_history: np.ndarray


def linear_loss_grad(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error of ``X @ w`` against ``y`` and its gradient in ``w``.

    Example:
        >>> X, y = np.array([[1.0], [2.0]]), np.array([1.0, 2.0])
        >>> linear_loss_grad(X, y, np.array([0.0]))
        (2.5, array([-5.]))
    """
    r = X @ w - y
    return float(np.mean(r * r)), (2.0 / len(y)) * (X.T @ r)


def logistic_loss_grad(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean log loss of the logits ``X @ w`` for labels ``y`` in {0, 1} and its gradient.

    Example:
        >>> X, y = np.array([[1.0], [-1.0]]), np.array([1.0, 0.0])
        >>> loss, g = logistic_loss_grad(X, y, np.array([0.0]))
        >>> round(loss, 4), g
        (0.6931, array([-0.5]))
    """
    z = X @ w
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow
    return loss, (X.T @ (p - y)) / len(y)


PROBLEMS = {"linear": linear_loss_grad, "logistic": logistic_loss_grad}


def n_iterations(n_samples: int, batch_size: int, epochs: int) -> int:
    """Number of updates of a run: :math:`\\lceil N/k\\rceil \\times` epochs.

    Example:
        >>> n_iterations(1000, 32, 10)
        320
    """
    return math.ceil(n_samples / batch_size) * epochs


def minibatch_indices(n_samples: int, batch_size: int, epochs: int,
                      seed: int | np.random.Generator | None = 0, shuffle: bool = True) -> Iterator[np.ndarray]:
    """Index arrays of every mini-batch of a run, epoch after epoch.

    Each epoch is a fresh permutation of ``range(n_samples)`` (sampling without
    replacement: each sample once per epoch) cut into consecutive batches.

    Example:
        >>> [b.tolist() for b in minibatch_indices(5, 2, 1, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n_samples) if shuffle else np.arange(n_samples)
        for start in range(0, n_samples, batch_size):
            yield order[start:start + batch_size]


def add_intercept(X: np.ndarray) -> np.ndarray:
    """``X`` with a column of ones appended (its weight is the intercept)."""
    return np.hstack([X, np.ones((X.shape[0], 1), dtype=X.dtype)])


def check_problem(X: np.ndarray, y: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies of ``X`` (2-D) and ``y`` (1-D), or ``ValueError`` saying what is wrong."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"Invalid X: expected a 2-D array, got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"Invalid y: expected a 1-D array, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: X has {X.shape[0]}, "
                         f"y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError("Invalid X: no samples")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("Input contains NaN or infinity")
    if model not in PROBLEMS:
        raise ValueError(f"Invalid model: {model!r} (must be 'linear' or 'logistic')")
    if model == "logistic" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("Invalid y: logistic regression needs labels in {0, 1}")
    return X, y


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be > 0)")


def descend(X: np.ndarray, y: np.ndarray, step: Step, *, lr: float, epochs: int = 100,
            batch_size: int | None = None, model: str = "linear", fit_intercept: bool = True,
            schedule: Callable[[int], float] | None = None, weight_decay: float = 0.0,
            w0: np.ndarray | None = None, seed: int | np.random.Generator | None = 0,
            shuffle: bool = True) -> Result:
    """Run ``step`` over the mini-batches of ``epochs`` epochs (see the module docstring).

    Args:
        X, y: the data; ``y`` in {0, 1} for ``model="logistic"``.
        step: ``step(w, g, lr) -> new w``, the optimizer's update (it may keep state).
        lr: base learning rate :math:`\\eta` (> 0).
        epochs: passes over the data.
        batch_size: samples per iteration; ``None`` is the full batch.
        model: ``"linear"`` (squared error) or ``"logistic"`` (log loss).
        fit_intercept: append a column of ones; its weight (last) is the intercept.
        schedule: multiplier of ``lr`` as a function of the iteration ``t = 0, 1, ...``.
        weight_decay: coupled L2: :math:`\\lambda w` is added to every gradient.
        w0: initial weights (default zeros).
        seed: seed or ``np.random.Generator`` of the shuffling.
        shuffle: draw a new permutation every epoch (else the data order).

    Returns:
        :class:`Result` ``(weights, loss_history)``.
    """
    X, y = check_problem(X, y, model)
    _check_positive("lr", lr)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"Invalid epochs: {epochs!r} (must be an integer >= 1)")
    k = len(y) if batch_size is None else batch_size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"Invalid batch_size: {batch_size!r} (must be an integer >= 1 or None)")
    if weight_decay < 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
    if fit_intercept:
        X = add_intercept(X)
    w = np.zeros(X.shape[1]) if w0 is None else np.array(w0, dtype=np.float64)
    if w.shape != (X.shape[1],):
        raise ValueError(f"Invalid w0: shape {w.shape}, expected ({X.shape[1]},)")
    loss_grad = PROBLEMS[model]
    history = []
    for t, idx in enumerate(minibatch_indices(len(y), k, epochs, seed, shuffle)):
        loss, g = loss_grad(X[idx], y[idx], w)
        history.append(loss)
        if weight_decay:
            g = g + weight_decay * w
        w = step(w, g, lr * (1.0 if schedule is None else float(schedule(t))))
    return Result(w, np.asarray(history))
