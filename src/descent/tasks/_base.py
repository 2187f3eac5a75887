"""The :class:`Task` container and the seeded batch streams every built-in task uses."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Batches", "Task", "accuracy_eval", "MissingDependency", "require"]

Batch = tuple[Tensor, Tensor]


class MissingDependency(ImportError):
    """An optional package a task needs is not installed; the message names the extra to install."""


def require(module: str, package: str, extra: str, what: str) -> Any:
    """Import ``module`` or raise :class:`MissingDependency` naming ``pip install 'descent[extra]'``.

    Example:
        >>> require("math", "math", "data", "this example").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{what} needs {package}, which is not installed: "
                                f"pip install 'descent[{extra}]'") from None


class Batches:
    """A re-iterable stream of ``(x, y)`` mini-batches, reproducible from the step index.

    Epoch ``e`` visits the rows in the order ``randperm(n, seed + e)`` (no replacement, as in the
    source documents' mini-batch SGD); :meth:`at` returns the batch of any global step, so a
    resumed run sees exactly the batches an uninterrupted one would. Iterating yields one epoch.

    Args:
        x, y: the rows.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        shuffle: reshuffle every epoch (``False``: fixed order, e.g. for evaluation).
        seed: the shuffling seed.
        drop_last: drop the last incomplete batch of each epoch.

    Example:
        >>> b = Batches(torch.arange(10.0)[:, None], torch.arange(10), batch_size=4)
        >>> len(b), b.at(0)[0].shape[0], b.at(2)[0].shape[0]
        (3, 4, 2)
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size} (must be an integer >= 1)")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"Invalid data: {len(x)} inputs and {len(y)} targets (must match, > 0)")
        self.x, self.y = x, y
        self.batch_size = min(int(batch_size), len(x))
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self._perm: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(len(self.x))
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.x), generator=g))
        return self._perm[1]

    def at(self, step: int) -> Batch:
        """The batch of global step ``step`` (epoch ``step // len(self)``)."""
        epoch, i = divmod(int(step), len(self))
        idx = self._order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        return self.x[idx], self.y[idx]

    def __iter__(self) -> Iterator[Batch]:
        return (self.at(i) for i in range(len(self)))

    def stream(self, start: int = 0) -> Iterator[Batch]:
        """Endless batches from global step ``start`` on."""
        step = start
        while True:
            yield self.at(step)
            step += 1

    def resized(self, batch_size: int) -> Batches:
        """The same rows and seed with another batch size."""
        return Batches(self.x, self.y, batch_size, shuffle=self.shuffle, seed=self.seed, drop_last=self.drop_last)


@dataclass
class Task:
    """A model, its data and its loss: one ready-to-train problem.

    Attributes:
        name: the registry name (``descent.tasks.TASKS``).
        description: one line for listings and reports.
        model: a freshly initialised model (seeded).
        train: training batches (:class:`Batches` or any object with ``at(step)``).
        val: validation batches or ``None``; test: test batches or ``None``.
        loss_fn: ``loss_fn(model(x), y) -> scalar`` (the data loss).
        make_model: ``make_model(seed)`` builds a new model of the same architecture.
        evaluate_fn: ``evaluate_fn(task, model) -> {metric: value}`` (see :meth:`evaluate`).
        metric: the headline metric's key in :meth:`evaluate`'s dict.
        higher_is_better: whether a larger ``metric`` is better.
        optimum: the known optimal training objective (convex tasks and test functions), else ``None``.
        lrs: starting lrs that differ, for this task, from the optimizers' declared defaults.
        kind: the kind of task (``classification``, ``language``, ``convex``, ``function``) whose
            declared default lr an optimizer starts from (:func:`descent.optim.registry.default_lr`).
        recipe: the :func:`descent.recipe` scenario that fits the task.
        reference: published numbers to state side by side (e.g. mnist1d accuracies).
        extra: task-specific data (e.g. the 2-D test function for trajectory plots).
    """

    name: str
    description: str
    model: nn.Module
    train: Batches
    val: Batches | None
    test: Batches | None
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    make_model: Callable[[int], nn.Module]
    evaluate_fn: Callable[[Task, nn.Module], dict[str, float]]
    metric: str = "val_loss"
    higher_is_better: bool = False
    optimum: float | None = None
    lrs: dict[str, float] = field(default_factory=dict)
    kind: str = "classification"
    recipe: str = "quick"
    reference: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    penalty: Callable[[nn.Module], Tensor] | None = None

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The training objective on one batch: data loss plus the task's penalty (if any)."""
        x, y = batch
        out = self.loss_fn(model(x), y)
        return out + self.penalty(model) if self.penalty is not None else out

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: :attr:`model`), computed without gradients in eval mode."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.evaluate_fn(self, model)
        finally:
            model.train(was_training)

    def lr_for(self, optimizer: str, default: float = 1e-3) -> float:
        """The starting lr for ``optimizer`` (case-insensitive): the task's own, else the one the
        optimizer declares for this kind of task, else ``default``."""
        from ..optim.registry import optimizer_info

        key = optimizer.strip().lower()
        if key in self.lrs:
            return self.lrs[key]
        try:
            lr = optimizer_info(key).default_lr(self.kind)
        except ValueError:
            lr = None
        return default if lr is None else lr


def mean_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], model: nn.Module, batches: Any) -> float:
    """The row-weighted mean of ``loss_fn`` over ``batches``."""
    total, n = 0.0, 0
    for x, y in batches:
        total += float(loss_fn(model(x), y)) * len(x)
        n += len(x)
    return total / max(n, 1)


def accuracy(model: nn.Module, batches: Any) -> float:
    """Fraction of rows whose argmax prediction equals the label."""
    correct, n = 0, 0
    for x, y in batches:
        correct += int((model(x).argmax(-1) == y).sum())
        n += len(x)
    return correct / max(n, 1)


def accuracy_eval(task: Task, model: nn.Module) -> dict[str, float]:
    """``val_loss``/``val_acc`` (and ``test_acc`` when there is a test split) for classifiers."""
    out = {"val_loss": mean_loss(task.loss_fn, model, task.val), "val_acc": accuracy(model, task.val)}
    if task.test is not None:
        out["test_acc"] = accuracy(model, task.test)
    return out


def split(n: int, seed: int, fractions: tuple[float, float] = (0.7, 0.15)) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded train/val/test row indices (the rest after train and val is test)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    return perm[:a], perm[a:b], perm[b:]


def seeded(make: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """Wrap an architecture constructor into ``make_model(seed)`` with seeded initialisation."""
    def make_model(seed: int = 0) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make()
    return make_model
