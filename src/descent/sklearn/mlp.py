"""Multi-layer perceptrons trained by any descent optimizer: :class:`MLPClassifier`, :class:`MLPRegressor`.

The network, initialisation and objective are scikit-learn's ``MLPClassifier`` /
``MLPRegressor``: dense layers with ``activation`` between them, Glorot-uniform
initial weights, and the objective

.. math::
    \\frac1B \\sum_{i \\in \\mathrm{batch}} s_i\\,\\ell_i + \\frac{\\alpha}{2B}\\sum_l \\|W_l\\|_F^2

(cross-entropy, logistic for two classes and softmax for more; half the squared error
for regression). Training runs in float32 on torch; ``predict`` runs the fitted
``coefs_`` / ``intercepts_`` in float64 NumPy, so predictions do not depend on how the
rows are batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ._base import DescentTrainer

__all__ = ["MLPClassifier", "MLPRegressor"]

_TORCH_ACT = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "identity": lambda x: x}
_NUMPY_ACT = {"relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh, "logistic": expit, "identity": lambda x: x}


class _BaseMLP(DescentTrainer, BaseEstimator):
    """Shared parameters, network and export of the two perceptrons."""

    _dtype = torch.float32

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (100,), activation: str = "relu", *,
                 alpha: float = 1e-4, batch_size: int | str = "auto", optimizer: Any = "adam",
                 lr: float = 1e-3, optimizer_kwargs: dict | None = None, schedule: Any = "constant",
                 power_t: float = 0.5, warmup: float = 0.1, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float | None = 1e-4, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10, warm_start: bool = False) -> None:
        self.hidden_layer_sizes, self.activation, self.alpha = hidden_layer_sizes, activation, alpha
        self.batch_size, self.optimizer, self.lr = batch_size, optimizer, lr
        self.optimizer_kwargs, self.schedule, self.power_t = optimizer_kwargs, schedule, power_t
        self.warmup, self.max_iter, self.shuffle = warmup, max_iter, shuffle
        self.random_state, self.tol, self.early_stopping = random_state, tol, early_stopping
        self.validation_fraction, self.n_iter_no_change = validation_fraction, n_iter_no_change
        self.warm_start = warm_start

    def _check_params(self) -> None:
        self._check_common_params()
        if self.activation not in _TORCH_ACT:
            raise ValueError(f"Invalid activation: {self.activation!r} (must be one of {', '.join(_TORCH_ACT)})")
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, (int, np.integer)) else list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"Invalid hidden_layer_sizes: {self.hidden_layer_sizes!r} (must be positive integers)")
        self._hidden = [int(s) for s in sizes]

    def _init_params(self, n_features: int, n_outputs: int) -> None:
        sizes = [n_features, *self._hidden, n_outputs]
        shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        if self.warm_start and hasattr(self, "_weights") and [tuple(w.shape) for w in self._weights] == shapes:
            return
        factor = 2.0 if self.activation == "logistic" else 6.0
        self._weights, self._biases = [], []
        for fan_in, fan_out in shapes:  # Glorot & Bengio (2010) uniform, as scikit-learn
            bound = np.sqrt(factor / (fan_in + fan_out))
            W = self._rng.uniform(-bound, bound, (fan_in, fan_out))
            b = self._rng.uniform(-bound, bound, fan_out)
            self._weights.append(torch.tensor(W, dtype=self._dtype, requires_grad=True))
            self._biases.append(torch.tensor(b, dtype=self._dtype, requires_grad=True))
        self._params = [t for pair in zip(self._weights, self._biases) for t in pair]
        for name in ("_optim", "_schedule_fn"):
            self.__dict__.pop(name, None)
        self.n_layers_ = len(sizes)
        self.n_outputs_ = n_outputs

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        act = _TORCH_ACT[self.activation]
        last = len(self._weights) - 1
        for i, (W, b) in enumerate(zip(self._weights, self._biases)):
            x = x @ W + b
            if i < last:
                x = act(x)
        return x

    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor, sb: torch.Tensor, n: int) -> torch.Tensor:
        per = self._per_sample_loss(self._forward(xb), yb)
        loss = (per * sb).mean()
        if self.alpha:
            loss = loss + 0.5 * float(self.alpha) * sum((W * W).sum() for W in self._weights) / xb.shape[0]
        return loss

    def _export(self) -> None:
        self.coefs_ = [W.detach().numpy().copy() for W in self._weights]
        self.intercepts_ = [b.detach().numpy().copy() for b in self._biases]

    def _raw(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        act = _NUMPY_ACT[self.activation]
        last = len(self.coefs_) - 1
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            X = X @ W.astype(np.float64) + b.astype(np.float64)
            if i < last:
                X = act(X)
        return X

    def _start(self, X: np.ndarray, n_outputs: int) -> None:
        self._seed_rng()
        self._init_params(X.shape[1], n_outputs)
        self.t_ = 0.0

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by any descent optimizer.

    Parameters as scikit-learn's ``MLPClassifier`` with the optimizer as a choice:
    ``optimizer`` (a :mod:`descent` optimizer name or class, default ``"adam"``), ``lr``
    (scikit-learn's ``learning_rate_init``), ``optimizer_kwargs`` and ``schedule``
    (``"constant"``, ``"adaptive"``, ``"invscaling"``, ``"warmup_cosine"``, ``"optimal"``
    or a callable multiplier). ``batch_size="auto"`` is ``min(200, ceil(n_samples / 10))``,
    not scikit-learn's ``min(200, n_samples)``: at least 10 optimizer steps per epoch, so
    small data sets are not trained by a few hundred full-batch steps (the same number
    of epochs reads the data as often but steps up to 10x more; scikit-learn's rule is
    ``batch_size=min(200, n_samples)``). Measured on seeds disjoint from the benchmark's
    reported ones, 100 epochs: iris 0.88 -> 0.95, wine 0.972 -> 0.979, digits and
    breast_cancer unchanged within noise; on 18 synthetic classification problems +0.029
    accuracy on average (17 of 18 at least as good), +0.009 at scikit-learn's full
    defaults (200 epochs, ``tol``).
    ``class_weight`` multiplies the sample weights, as in the linear models.

    Attributes:
        coefs_, intercepts_, classes_, n_features_in_, n_iter_, loss_curve_, best_loss_,
        t_ (samples seen), n_steps_, n_layers_, n_outputs_, out_activation_,
        validation_scores_ and best_validation_score_ (with ``early_stopping``).

    Example:
        >>> from sklearn.datasets import load_iris
        >>> X, y = load_iris(return_X_y=True)
        >>> clf = MLPClassifier((32,), optimizer="adamw", lr=1e-2, max_iter=100, random_state=0).fit(X, y)
        >>> clf.score(X, y) > 0.9
        True
    """

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (100,), activation: str = "relu", *,
                 alpha: float = 1e-4, batch_size: int | str = "auto", optimizer: Any = "adam",
                 lr: float = 1e-3, optimizer_kwargs: dict | None = None, schedule: Any = "constant",
                 power_t: float = 0.5, warmup: float = 0.1, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float | None = 1e-4, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10, warm_start: bool = False,
                 class_weight: Any = None) -> None:
        super().__init__(hidden_layer_sizes, activation, alpha=alpha, batch_size=batch_size,
                         optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs, schedule=schedule,
                         power_t=power_t, warmup=warmup, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
                         warm_start=warm_start)
        self.class_weight = class_weight

    _is_classifier = True

    def _per_sample_loss(self, out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if out.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(out[:, 0], yb[:, 0], reduction="none")
        return F.cross_entropy(out, yb[:, 0].long(), reduction="none")

    def _prepare(self, X: np.ndarray, y: np.ndarray, sample_weight: Any) -> tuple[np.ndarray, np.ndarray]:
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if self.class_weight is not None:
            cw = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
            sw = sw * cw[np.searchsorted(self.classes_, y)]
        idx = np.searchsorted(self.classes_, y)
        Y = (idx == 1).astype(np.float64) if len(self.classes_) == 2 else idx.astype(np.float64)
        return Y[:, None], sw

    def _set_classes(self, classes: np.ndarray) -> None:
        if len(classes) < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {len(classes)} class")
        self.classes_ = classes
        self.out_activation_ = "logistic" if len(classes) == 2 else "softmax"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Fit on ``X`` (n_samples, n_features) and labels ``y``; returns ``self``."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self._set_classes(np.unique(y))
        Y, sw = self._prepare(X, y, sample_weight)
        self._start(X, 1 if len(self.classes_) == 2 else len(self.classes_))
        self._fit_loop(X, Y, sw, y)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> MLPClassifier:
        """One epoch over ``X``, continuing the optimizer state and the schedule (``classes`` on the first call)."""
        self._check_params()
        X, y, first = self._validate_partial_fit_classes(X, y, classes)
        if self.class_weight == "balanced":
            raise ValueError("class_weight 'balanced' is not supported for partial_fit")
        Y, sw = self._prepare(X, y, sample_weight)
        if first:
            self._start(X, 1 if len(self.classes_) == 2 else len(self.classes_))
        self._partial_loop(X, Y, sw)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes)."""
        raw = self._raw(X)
        if raw.shape[1] == 1:
            p = expit(raw)
            return np.hstack([1.0 - p, p])
        return softmax(raw, axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels."""
        raw = self._raw(X)
        idx = (raw[:, 0] > 0).astype(int) if raw.shape[1] == 1 else raw.argmax(axis=1)
        return self.classes_[idx]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by any descent optimizer (multi-output allowed).

    Same parameters as :class:`MLPClassifier` (without ``class_weight``); the loss is half
    the squared error and ``early_stopping`` monitors R². ``batch_size="auto"`` is
    scikit-learn's ``min(200, n_samples)`` here, not the classifier's ten steps per
    epoch: more steps help regression targets with little noise but over-fit small noisy
    ones (diabetes R² 0.487 -> 0.460 at 100 epochs on held-out seeds; -0.06 to -0.23 on
    small synthetic problems with high noise), and squared error has no margin to
    forgive that, so the default keeps scikit-learn's algorithm.

    Example:
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.preprocessing import scale
        >>> X, y = load_diabetes(return_X_y=True)
        >>> reg = MLPRegressor((32,), lr=1e-2, max_iter=200, random_state=0).fit(scale(X), scale(y))
        >>> reg.score(scale(X), scale(y)) > 0.5
        True
    """

    _auto_min_steps = 1  # batch_size="auto" = min(200, n), as scikit-learn (see the docstring)

    def _per_sample_loss(self, out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - yb) ** 2).mean(dim=1)

    def _targets(self, y: np.ndarray) -> np.ndarray:
        return (y[:, None] if y.ndim == 1 else y).astype(np.float64)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Fit on ``X`` (n_samples, n_features) and targets ``y`` (n_samples,) or (n_samples, n_outputs)."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        Y = self._targets(y)
        self._start(X, Y.shape[1])
        self.out_activation_ = "identity"
        self._fit_loop(X, Y, sw, y)
        return self

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``X``, continuing the optimizer state and the schedule."""
        self._check_params()
        first = not hasattr(self, "coefs_")
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True, reset=first)
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        Y = self._targets(y)
        if first:
            self._start(X, Y.shape[1])
            self.out_activation_ = "identity"
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} outputs, but this MLPRegressor was fitted with {self.n_outputs_}")
        self._partial_loop(X, Y, sw)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions, shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        raw = self._raw(X)
        return raw.ravel() if raw.shape[1] == 1 else raw

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
