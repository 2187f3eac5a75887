"""Classification tasks on bundled data: scikit-learn's 8x8 digits and the offline MNIST-1D."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._base import Batches, Task, accuracy_eval, require, seeded, split

log = logging.getLogger("descent.tasks")

__all__ = ["digits_mlp", "digits_cnn", "mnist1d"]


def _digits(seed: int, batch_size: int, image: bool) -> tuple[Batches, Batches, Batches]:
    datasets = require("sklearn.datasets", "scikit-learn", "data", "task digits-mlp/digits-cnn")
    x_np, y_np = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32) / 16.0
    y = torch.tensor(y_np, dtype=torch.long)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    tr, va, te = split(len(y), seed)
    return (Batches(x[tr], y[tr], batch_size, seed=seed), Batches(x[va], y[va], 512, shuffle=False),
            Batches(x[te], y[te], 512, shuffle=False))


def _classifier(name: str, description: str, make: Any, data: tuple[Batches, Batches, Batches], seed: int,
                recipe: str, reference: dict[str, Any] | None = None) -> Task:
    make_model = seeded(make)
    train, val, test = data
    return Task(name=name, description=description, model=make_model(seed), train=train, val=val, test=test,
                loss_fn=nn.functional.cross_entropy, make_model=make_model, evaluate_fn=accuracy_eval,
                metric="val_acc", higher_is_better=True, kind="classification", recipe=recipe,
                reference=reference or {})


def digits_mlp(seed: int = 0, batch_size: int = 64, hidden: int = 128) -> Task:
    """MLP 64-``hidden``-10 on the 1,797 8x8 digits (70/15/15 split fixed by ``seed``)."""
    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return _classifier("digits-mlp", f"sklearn digits 8x8, MLP 64-{hidden}-10", make,
                       _digits(seed, batch_size, image=False), seed, "quick")


class _SmallCNN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def digits_cnn(seed: int = 0, batch_size: int = 64, width: int = 8) -> Task:
    """Two 3x3 conv layers, max-pool and a linear head on the 8x8 digits."""
    return _classifier("digits-cnn", f"sklearn digits 8x8, CNN conv{width}-conv{2 * width}-pool-linear",
                       lambda: _SmallCNN(width), _digits(seed, batch_size, image=True), seed, "cnn")


def _cache_dir() -> Path:
    base = os.environ.get("DESCENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "descent")
    return Path(base)


def make_mnist1d(num_samples: int = 5000, cache: bool = True) -> dict[str, np.ndarray]:
    """MNIST-1D generated locally with the package's own generator (never downloaded).

    ``mnist1d.data.make_dataset(get_dataset_args())`` builds the standard 4,000/1,000 split from
    the package's templates with seed 42; the result is cached as ``.npz`` under
    ``$DESCENT_CACHE`` (default ``~/.cache/descent``). NumPy's global random state is restored.
    """
    require("matplotlib", "matplotlib", "data", "the mnist1d task").use("Agg", force=False)  # mnist1d imports pyplot
    data_mod = require("mnist1d.data", "mnist1d", "data", "the mnist1d task")
    get_dataset_args, make_dataset = data_mod.get_dataset_args, data_mod.make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    key = hashlib.sha1(json.dumps({k: v for k, v in vars(args).items() if k != "url"},
                                  sort_keys=True).encode()).hexdigest()[:12]
    path = _cache_dir() / f"mnist1d-{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            log.warning("ignoring unreadable cache %s", path)
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    out = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **out)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only home is not an error
            log.info("could not cache mnist1d at %s: %s", path, exc)
    return out


def mnist1d(seed: int = 0, batch_size: int = 100, hidden: int = 100, cache: bool = True) -> Task:
    """MLP 40-``hidden``-``hidden``-10 on MNIST-1D (4,000 train rows split 3,500/500 for validation,
    the package's 1,000 test rows as test). Published: logistic regression ~32 %, MLP ~68 %."""
    d = make_mnist1d(cache=cache)
    x = torch.tensor(d["x"], dtype=torch.float32)
    y = torch.tensor(d["y"], dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, va = perm[:3500], perm[3500:]
    data = (Batches(x[tr], y[tr], batch_size, seed=seed), Batches(x[va], y[va], 500, shuffle=False),
            Batches(torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.long),
                    500, shuffle=False))

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 10))
    ref = {"logistic regression test acc": 0.32, "MLP test acc": 0.68, "CNN test acc": 0.94,
           "source": "Greydanus 2020, MNIST-1D (arXiv:2011.14439), README table"}
    return _classifier("mnist1d", f"MNIST-1D (offline generator), MLP 40-{hidden}-{hidden}-10", make, data, seed,
                       "quick", ref)
