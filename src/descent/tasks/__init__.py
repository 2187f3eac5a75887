"""Built-in tasks on real, locally available data (no download): for the CLI, benchmarks and tests.

``get_task(name, seed=0, **options)`` builds one; :data:`TASKS` lists them with a description.
Every task gives a seeded model, train/val(/test) batch streams whose batch for any step is
reproducible (``task.train.at(step)``), a loss, and ``evaluate(model)``.

Example:
    >>> from descent.tasks import get_task
    >>> task = get_task("linear")
    >>> loss = task.loss(task.model, task.train.at(0)); loss.backward()
    >>> sorted(task.evaluate())
    ['gap', 'train_objective', 'val_loss']
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ._base import Batches, Task
from .charlm import charlm
from .convex import linear, logistic
from .functions import FUNCTIONS, function_task
from .vision import digits_cnn, digits_mlp, mnist1d

__all__ = ["Task", "Batches", "TASKS", "get_task", "task_names"]

_BUILDERS: dict[str, Callable[..., Task]] = {
    "digits-mlp": digits_mlp,
    "digits-cnn": digits_cnn,
    "mnist1d": mnist1d,
    "charlm": charlm,
    "logistic": logistic,
    "linear": linear,
    **{name: partial(function_task, name) for name in FUNCTIONS},
}

#: name -> one-line description of every built-in task.
TASKS: dict[str, str] = {
    "digits-mlp": "sklearn 8x8 digits (1,797 images), MLP; 70/15/15 split by seed",
    "digits-cnn": "sklearn 8x8 digits, small CNN",
    "mnist1d": "MNIST-1D from the package's offline generator, MLP (published: logreg ~32 %, MLP ~68 %)",
    "charlm": "character-level transformer LM on the Python stdlib's own source text",
    "logistic": "breast_cancer L2 logistic regression, optimum by Newton to 1e-10",
    "linear": "diabetes least squares, closed-form optimum",
    **{name: f"2-D {name} test function (trajectory plots)" for name in FUNCTIONS},
}


def task_names() -> list[str]:
    """The registry names, in listing order."""
    return list(_BUILDERS)


def get_task(name: str, seed: int = 0, **options: Any) -> Task:
    """Build the task ``name`` with data split and model initialisation fixed by ``seed``.

    Args:
        name: one of :data:`TASKS` (case-insensitive; ``_`` and ``-`` are interchangeable).
        seed: the seed of the split, the shuffling and the model's initialisation.
        **options: task-specific options (e.g. ``batch_size``, ``hidden``).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    key = name.strip().lower().replace("_", "-")
    if key not in _BUILDERS:
        raise ValueError(f"Invalid task: {name!r} (valid: {', '.join(_BUILDERS)})")
    return _BUILDERS[key](seed=seed, **options)
