"""scikit-learn compatible estimators trained by any descent optimizer.

``SGDClassifier`` and ``SGDRegressor`` (linear models, float64) and ``MLPClassifier``
and ``MLPRegressor`` (multi-layer perceptrons, float32) take the optimizer by name
(``optimizer="adamw"``, ``lr=...``, ``optimizer_kwargs={...}``) and a learning-rate
``schedule`` (``"optimal"``, ``"invscaling"``, ``"adaptive"``, ``"constant"``,
``"warmup_cosine"`` or a callable), and pass scikit-learn's estimator checks.
``partial_fit`` keeps the step counter, so schedules continue across calls.

This subpackage imports scikit-learn; ``import descent`` does not import it.

Example:
    >>> from descent.sklearn import SGDClassifier
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.pipeline import make_pipeline
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> clf = make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", optimizer="adamw",
    ...     lr=0.01, schedule="warmup_cosine", batch_size=32, max_iter=20, random_state=0))
    >>> clf.fit(X, y).score(X, y) > 0.95
    True
"""

try:
    import sklearn as _sklearn  # noqa: F401
except ImportError:
    raise ImportError("descent.sklearn needs scikit-learn, which is not installed: "
                      "pip install 'descent[sklearn]'") from None

from ._base import optimizer_table, resolve_optimizer  # noqa: E402
from .linear import SGDClassifier, SGDRegressor  # noqa: E402
from .mlp import MLPClassifier, MLPRegressor  # noqa: E402

__all__ = ["SGDClassifier", "SGDRegressor", "MLPClassifier", "MLPRegressor",
           "optimizer_table", "resolve_optimizer"]
