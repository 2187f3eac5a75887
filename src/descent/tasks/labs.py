"""The source documents' small experiments, reproducible: lr sensitivity and batch-size/lr scaling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import descent

__all__ = ["lr_sensitivity", "batch_size_scaling"]


def lr_sensitivity(lrs: Sequence[float] = (1e-2, 1e-1), steps: int = 20, seed: int = 0) -> dict[str, Any]:
    """The "5-minute lab" of source document 001: the same MLP 32-64-10 and SGD(momentum=0.9),
    only the lr differs; each step draws a fresh random batch (128 x 32, 10 random labels) from the
    seeded global generator, exactly as the document's ``run_once``. Runs ``descent.SGD`` and
    ``torch.optim.SGD`` side by side (they must agree). Returns per lr the losses and first/last.
    The global RNG state is restored afterwards.
    """
    out: dict[str, Any] = {"steps": steps, "runs": []}
    for lr in lrs:
        row: dict[str, Any] = {"lr": lr}
        for impl, cls in (("descent", descent.SGD), ("torch", torch.optim.SGD)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
                opt = cls(model.parameters(), lr=lr, momentum=0.9)
                losses = []
                for _ in range(steps):
                    x, y = torch.randn(128, 32), torch.randint(0, 10, (128,))
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
            row[impl] = losses
        row["first"], row["last"] = row["descent"][0], row["descent"][-1]
        row["max_abs_diff_vs_torch"] = max(abs(a - b) for a, b in zip(row["descent"], row["torch"]))
        out["runs"].append(row)
    return out


def batch_size_scaling(task_name: str = "digits-mlp", batch_sizes: Sequence[int] = (32, 64, 128, 256),
                       base_lr: float = 0.01, epochs: int = 3, seed: int = 0,
                       rules: Sequence[str] = ("fixed", "linear", "sqrt"),
                       callback: Any = None) -> dict[str, Any]:
    """Source documents 001/003: when the batch grows, scale the lr (linear rule
    :math:`\\eta_2 = \\eta_1 B_2/B_1`, or sqrt). Trains SGD-momentum for the same number of
    epochs at every batch size, with the lr fixed at ``base_lr`` (tuned at the smallest batch)
    or scaled by each rule, and reports the final validation metric."""
    from . import get_task
    from .training import train

    task = get_task(task_name, seed=seed)
    b0 = batch_sizes[0]
    scale = getattr(descent, "scale_lr", None)
    rows = []
    for b in batch_sizes:
        task.train = task.train.resized(b)
        steps = epochs * len(task.train)
        for rule in rules:
            if rule == "fixed":
                lr = base_lr
            elif scale is not None:
                lr = float(scale(base_lr, b0, b, rule=rule).lr)
            else:
                lr = base_lr * (b / b0 if rule == "linear" else (b / b0) ** 0.5)
            res = train(task, "sgd", lr, steps, seed=seed, schedule=False)
            rows.append({"batch_size": b, "rule": rule, "lr": lr, "steps": steps, **res.final})
            if callback is not None:
                callback(rows[-1])
    return {"task": task_name, "metric": task.metric, "epochs": epochs, "base_lr": base_lr, "rows": rows}
