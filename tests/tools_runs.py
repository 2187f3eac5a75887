"""Real small training runs on bundled data (sklearn digits / breast_cancer) for the tools' tests."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from descent.tools.monitor import Monitor


@lru_cache(maxsize=None)
def dataset(name: str = "digits") -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features and integer labels (float32 / int64), in a fixed shuffled order."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.preprocessing import StandardScaler

    x, y = (load_digits if name == "digits" else load_breast_cancer)(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return torch.tensor(x, dtype=torch.float32)[perm], torch.tensor(y)[perm]


def mlp(n_in: int = 64, hidden: int = 64, n_out: int = 10, depth: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, n_out))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, n: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """``n`` mini-batches from shuffled epochs (sampling without replacement)."""
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[Any, Any]] = []
    bs = min(batch_size, len(x))
    while len(out) < n:
        perm = torch.randperm(len(x), generator=g)
        out += [(x[perm[i:i + bs]], y[perm[i:i + bs]]) for i in range(0, len(x) - bs + 1, bs)]
    return out[:n]


def train(model: nn.Module, opt: torch.optim.Optimizer, data: list[tuple[Any, Any]], *,
          val: tuple[torch.Tensor, torch.Tensor] | None = None, val_every: int = 25,
          clip: float | None = None, scheduler: Any = None, sched_every: int = 1,
          monitor: Monitor | None = None) -> Monitor:
    """Train with cross-entropy, logging every step to a Monitor; return it."""
    mon = monitor or Monitor(per_layer=False)
    loss_fn = nn.functional.cross_entropy
    for step, (xb, yb) in enumerate(data):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        norm = None
        if clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        opt.step()
        if scheduler is not None and (step + 1) % sched_every == 0:
            scheduler.step()
        v = None
        if val is not None and (step + 1) % val_every == 0:
            with torch.no_grad():
                v = float(loss_fn(model(val[0]), val[1]))
        mon.log(step, loss=loss, model=model, optimizer=opt,
                clip=None if norm is None else (norm, norm > clip), val_loss=v)
    return mon


def digits_run(lr: float = 3e-3, steps: int = 300, opt: str = "adam", momentum: float = 0.9,
               n_train: int | None = None, hidden: int = 64, depth: int = 1, batch_size: int = 64,
               **kw: Any) -> Monitor:
    """A digits MLP run with a held-out validation split (the last 397 samples)."""
    x, y = dataset("digits")
    xt, yt, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    if n_train is not None:
        xt, yt = xt[:n_train], yt[:n_train]
    model = mlp(hidden=hidden, depth=depth)
    make: Callable[..., torch.optim.Optimizer] = {
        "adam": lambda p: torch.optim.Adam(p, lr=lr),
        "sgd": lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum),
    }[opt]
    o = make(model.parameters())
    sched = kw.pop("schedule", None)
    scheduler = sched(o) if sched is not None else None
    return train(model, o, batches(xt, yt, batch_size, steps), val=(xv, yv), scheduler=scheduler, **kw)


def finite(values: list[Any]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]
