"""Classic 2-D test functions as tasks, for convergence checks and trajectory plots.

The "model" is a single point :math:`(x, y)` (parameter ``xy``); its forward ignores the batch and
returns :math:`f(x, y)`. ``task.extra["fn"]`` evaluates ``f`` on NumPy grids for contour plots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._base import Task

__all__ = ["FUNCTIONS", "TestFunction", "function_task"]


def rosenbrock(x: Any, y: Any) -> Any:
    """:math:`(1-x)^2 + 100(y-x^2)^2`, minimum 0 at (1, 1)."""
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(x: Any, y: Any) -> Any:
    """Beale's function, minimum 0 at (3, 0.5)."""
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def himmelblau(x: Any, y: Any) -> Any:
    """:math:`(x^2+y-11)^2 + (x+y^2-7)^2`, four minima of value 0."""
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def rastrigin(x: Any, y: Any) -> Any:
    """:math:`20 + \\sum (v^2 - 10\\cos 2\\pi v)`, many local minima, global 0 at the origin."""
    cos = torch.cos if isinstance(x, Tensor) else np.cos
    return 20 + x**2 - 10 * cos(2 * np.pi * x) + y**2 - 10 * cos(2 * np.pi * y)


def quadratic(x: Any, y: Any) -> Any:
    """Ill-conditioned quadratic :math:`\\tfrac12(x^2 + 25 y^2)` (condition number 25), minimum 0 at 0."""
    return 0.5 * (x**2 + 25 * y**2)


class TestFunction:
    """A 2-D function with its start point, minimizers and plot window."""

    __test__ = False  # not a pytest class

    def __init__(self, fn: Callable[[Any, Any], Any], start: tuple[float, float],
                 minima: list[tuple[float, float]], xlim: tuple[float, float], ylim: tuple[float, float],
                 lrs: dict[str, float]) -> None:
        self.fn, self.start, self.minima, self.xlim, self.ylim, self.lrs = fn, start, minima, xlim, ylim, lrs


FUNCTIONS: dict[str, TestFunction] = {
    "rosenbrock": TestFunction(rosenbrock, (-1.5, 2.0), [(1.0, 1.0)], (-2.0, 2.0), (-1.0, 3.0),
                               {"sgd": 1e-3, "sgd-plain": 1e-3, "adam": 0.05, "adamw": 0.05, "lion": 0.01,
                                "rmsprop": 0.01, "adagrad": 0.5, "muon": 0.01, "lamb": 0.05}),
    "beale": TestFunction(beale, (1.0, 1.5), [(3.0, 0.5)], (-4.5, 4.5), (-4.5, 4.5),
                          {"sgd": 1e-3, "sgd-plain": 1e-2, "adam": 0.05, "adamw": 0.05, "lion": 0.01,
                           "rmsprop": 0.01, "adagrad": 0.5}),
    "himmelblau": TestFunction(himmelblau, (0.0, 0.0), [(3.0, 2.0), (-2.805118, 3.131312),
                                                        (-3.779310, -3.283186), (3.584428, -1.848126)],
                               (-5.0, 5.0), (-5.0, 5.0), {"sgd": 1e-3, "sgd-plain": 0.01, "adam": 0.1,
                                                          "adamw": 0.1, "lion": 0.02, "rmsprop": 0.05}),
    "rastrigin": TestFunction(rastrigin, (2.3, 2.7), [(0.0, 0.0)], (-3.0, 3.0), (-3.0, 3.0),
                              {"sgd": 1e-3, "sgd-plain": 1e-3, "adam": 0.05, "adamw": 0.05, "lion": 0.01}),
    "quadratic": TestFunction(quadratic, (-4.0, 2.0), [(0.0, 0.0)], (-5.0, 5.0), (-3.0, 3.0),
                              {"sgd": 0.02, "sgd-plain": 0.07, "adam": 0.1, "adamw": 0.1, "lion": 0.02,
                               "rmsprop": 0.02, "adagrad": 1.0}),
}


class Point(nn.Module):
    """A point in the plane; ``forward`` returns ``fn(x, y)`` at that point."""

    def __init__(self, fn: Callable[[Any, Any], Any], start: tuple[float, float]) -> None:
        super().__init__()
        self.fn = fn
        self.xy = nn.Parameter(torch.tensor(start, dtype=torch.float32).reshape(1, 2))

    def forward(self, batch: Tensor | None = None) -> Tensor:
        return self.fn(self.xy[0, 0], self.xy[0, 1])


class NoData:
    """The batch stream of a deterministic objective: every step gets ``(empty, empty)``."""

    def __init__(self) -> None:
        self.batch_size = 1
        self._batch = (torch.empty(0), torch.empty(0))

    def __len__(self) -> int:
        return 1

    def at(self, step: int) -> tuple[Tensor, Tensor]:
        return self._batch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield self._batch

    def resized(self, batch_size: int) -> NoData:
        return self


def _value(out: Tensor, _: Tensor) -> Tensor:
    return out


def _evaluate(task: Task, model: nn.Module) -> dict[str, float]:
    x, y = (float(v) for v in model.xy.detach().reshape(-1))
    dist = min(float(np.hypot(x - a, y - b)) for a, b in task.extra["minima"])
    val = float(model())
    return {"val_loss": val, "gap": val - float(task.optimum or 0.0), "dist": dist}


def function_task(name: str, seed: int = 0, start: tuple[float, float] | None = None) -> Task:
    """The test function ``name`` (see :data:`FUNCTIONS`) started at its classic start point."""
    spec = FUNCTIONS[name]
    start = spec.start if start is None else tuple(start)

    def make_model(seed: int = 0) -> nn.Module:
        return Point(spec.fn, start)  # type: ignore[arg-type]
    return Task(name=name, description=f"{name} test function from {start}", model=make_model(seed),
                train=NoData(), val=NoData(), test=None, loss_fn=_value, make_model=make_model,  # type: ignore[arg-type]
                evaluate_fn=_evaluate, metric="gap", optimum=0.0, lrs=dict(spec.lrs), kind="function", recipe="convex",
                extra={"fn": spec.fn, "minima": spec.minima, "xlim": spec.xlim, "ylim": spec.ylim,
                       "start": start})
