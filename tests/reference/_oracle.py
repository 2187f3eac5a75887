"""A tiny float64 NumPy harness for independent reference optimizers.

A reference is a *rule*: ``rule(x, g, state, hp)`` updates the parameter ``x`` (a
float64 NumPy array, in place) and its ``state`` dict (NumPy arrays and numbers)
from the gradient ``g``, with ``hp`` the param group's hyperparameters. Rules are
written from the papers' pseudo-code and the source documents' formulas, not from
any implementation. :class:`NumpyOracle` runs a rule as a ``torch.optim.Optimizer``
so the shared tests can drive it exactly like the optimizer under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Rule = Callable[[np.ndarray, np.ndarray, dict, dict], None]


class NumpyOracle(torch.optim.Optimizer):
    """Runs ``rule`` per parameter in float64 NumPy (see the module docstring)."""

    def __init__(self, params: Any, rule: Rule, **defaults: Any) -> None:
        self._rule = rule
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                x = p.detach().cpu().numpy().astype(np.float64).copy()
                g = p.grad.detach().cpu().numpy().astype(np.float64)
                self._rule(x, g, self.state[p], group)
                p.copy_(torch.from_numpy(x).to(p.dtype))


def oracle(rule: Rule, **defaults: Any) -> Callable[..., NumpyOracle]:
    """A constructor ``(params, **hp) -> NumpyOracle`` for ``rule`` with default hyperparameters."""

    def make(params: Any, **hp: Any) -> NumpyOracle:
        return NumpyOracle(params, rule, **{**defaults, **hp})

    make.__name__ = f"oracle_{rule.__name__}"
    return make
