"""Convex problems on bundled tabular data whose optimum is known: ``logistic`` and ``linear``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._base import Batches, Task, mean_loss, require, seeded, split

__all__ = ["logistic", "linear", "logistic_optimum", "linear_optimum"]


def _standardize(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu, sd = x[train].mean(0), x[train].std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def logistic_optimum(x: np.ndarray, y: np.ndarray, l2: float, tol: float = 1e-10,
                     max_iter: int = 100) -> tuple[np.ndarray, float, float]:
    r"""Newton's method in float64 for :math:`\min_{w,b} \tfrac1n\sum \log(1+e^{-s_i(w^\top x_i+b)})
    + \tfrac{\lambda}2\lVert w\rVert^2` (bias not penalised). Returns (w with b last, objective, final
    gradient norm); stops when the gradient norm is below ``tol``."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    w = np.zeros(d + 1)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) / n + reg * w
        gnorm = float(np.linalg.norm(grad))
        if gnorm < tol:
            break
        hess = (a * (p * (1 - p))[:, None]).T @ a / n + np.diag(reg)
        w -= np.linalg.solve(hess + 1e-12 * np.eye(d + 1), grad)
    z = a @ w
    obj = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w[:-1] @ w[:-1])
    return w, obj, gnorm


def linear_optimum(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Closed-form least squares (with intercept, float64): (w with b last, mean squared error)."""
    a = np.hstack([x, np.ones((len(x), 1))])
    w, *_ = np.linalg.lstsq(a, y, rcond=None)
    return w, float(np.mean((a @ w - y) ** 2))


def _convex_eval(task: Task, model: nn.Module) -> dict[str, float]:
    x, y = task.extra["train_full"]
    objective = float(task.loss(model, (x, y)))
    out = {"train_objective": objective, "gap": objective - float(task.optimum or 0.0),
           "val_loss": mean_loss(task.loss_fn, model, task.val)}
    if task.name == "logistic":
        xv, yv = task.val.x, task.val.y
        out["val_acc"] = float(((model(xv).squeeze(-1) > 0).float() == yv).float().mean())
    return out


def _bce(out: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(out.squeeze(-1), y)


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out.squeeze(-1), y)


def _tabular(x_np: np.ndarray, y_np: np.ndarray, seed: int, batch_size: int, target_std: bool
             ) -> tuple[np.ndarray, np.ndarray, tuple[Tensor, Tensor, Tensor]]:
    tr, va, te = split(len(y_np), seed)
    x = _standardize(np.asarray(x_np, dtype=np.float64), tr.numpy())
    y = np.asarray(y_np, dtype=np.float64)
    if target_std:
        y = (y - y[tr.numpy()].mean()) / y[tr.numpy()].std()
    return x, y, (tr, va, te)


def logistic(seed: int = 0, batch_size: int = 64, l2: float = 1e-2) -> Task:
    """L2-regularised logistic regression on breast_cancer (30 standardized features).

    The optimum of the training objective (mean log-loss + ``l2``/2 ||w||^2) is found by Newton's
    method to a gradient norm below 1e-10, so ``evaluate()["gap"]`` is the exact suboptimality.
    """
    xs, ys = require("sklearn.datasets", "scikit-learn", "data", "the logistic task").load_breast_cancer(
        return_X_y=True)
    x, y, (tr, va, te) = _tabular(xs, ys, seed, batch_size, target_std=False)
    _, opt, gnorm = logistic_optimum(x[tr.numpy()], y[tr.numpy()], l2)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    make_model = seeded(lambda: nn.Linear(30, 1))

    def penalty(model: nn.Module) -> Tensor:
        return 0.5 * l2 * model.weight.pow(2).sum()
    return Task(name="logistic", description=f"breast_cancer logistic regression, L2={l2:g}, optimum by Newton",
                model=make_model(seed), train=Batches(xt[tr], yt[tr], batch_size, seed=seed),
                val=Batches(xt[va], yt[va], 1024, shuffle=False), test=Batches(xt[te], yt[te], 1024, shuffle=False),
                loss_fn=_bce, make_model=make_model, evaluate_fn=_convex_eval, metric="gap", optimum=opt,
                kind="convex", recipe="convex", penalty=penalty,
                extra={"train_full": (xt[tr], yt[tr]), "optimum_grad_norm": gnorm, "l2": l2})


def linear(seed: int = 0, batch_size: int = 32) -> Task:
    """Least-squares linear regression on diabetes (10 standardized features, standardized target);
    the optimal training MSE is the closed-form least-squares solution."""
    xs, ys = require("sklearn.datasets", "scikit-learn", "data", "the linear task").load_diabetes(return_X_y=True)
    x, y, (tr, va, te) = _tabular(xs, ys, seed, batch_size, target_std=True)
    _, opt = linear_optimum(x[tr.numpy()], y[tr.numpy()])
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    make_model = seeded(lambda: nn.Linear(10, 1))
    return Task(name="linear", description="diabetes least squares, closed-form optimum",
                model=make_model(seed), train=Batches(xt[tr], yt[tr], batch_size, seed=seed),
                val=Batches(xt[va], yt[va], 1024, shuffle=False), test=Batches(xt[te], yt[te], 1024, shuffle=False),
                loss_fn=_mse, make_model=make_model, evaluate_fn=_convex_eval, metric="gap", optimum=opt,
                kind="convex", recipe="convex", extra={"train_full": (xt[tr], yt[tr])})
