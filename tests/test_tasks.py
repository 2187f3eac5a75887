"""descent.tasks: every task builds offline, trains, evaluates; known optima are optima; batches reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from descent.tasks import TASKS, get_task
from descent.tasks.convex import linear_optimum, logistic_optimum
from descent.tasks.training import OPTIMIZERS, compare, make_optimizer, summarize, train

FAST = ["digits-mlp", "digits-cnn", "charlm", "logistic", "linear", "rosenbrock", "beale", "himmelblau",
        "rastrigin", "quadratic"]


@pytest.mark.parametrize("name", FAST)
def test_task_builds_and_one_step_lowers_nothing_broken(name: str) -> None:
    task = get_task(name, seed=0)
    batch = task.train.at(0)
    loss = task.loss(task.model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.parameters())
    metrics = task.evaluate()
    assert task.metric in metrics and all(np.isfinite(v) for v in metrics.values())


def test_mnist1d_offline_split_sizes() -> None:
    task = get_task("mnist1d")
    assert task.train.x.shape == (3500, 40) and len(task.val.x) == 500 and len(task.test.x) == 1000
    assert task.reference["MLP test acc"] == 0.68


def test_unknown_task_lists_valid() -> None:
    with pytest.raises(ValueError, match="digits-mlp"):
        get_task("nope")


def test_seeded_split_and_batches_reproduce() -> None:
    a, b, c = get_task("digits-mlp", seed=0), get_task("digits-mlp", seed=0), get_task("digits-mlp", seed=1)
    assert torch.equal(a.train.at(37)[0], b.train.at(37)[0])
    assert not torch.equal(a.train.x, c.train.x)
    # one epoch visits every training row exactly once
    seen = torch.cat([y for _, y in a.train])
    assert len(seen) == len(a.train.x)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_logistic_optimum_is_stationary_and_not_beaten() -> None:
    task = get_task("logistic")
    assert task.extra["optimum_grad_norm"] < 1e-9
    x, y = (t.double().numpy() for t in task.extra["train_full"])
    w, obj, _ = logistic_optimum(x, y, task.extra["l2"])
    # a perturbation of the optimum is worse
    z = np.hstack([x, np.ones((len(x), 1))]) @ (w + 1e-3)
    worse = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * task.extra["l2"] * np.sum((w[:-1] + 1e-3) ** 2)
    assert worse > obj and abs(obj - task.optimum) < 1e-8  # float32-rounded inputs here
    res = train(task, "adamw", 0.05, 100, schedule=True)
    assert 0 <= res.final["gap"] < 0.01  # gap is objective - optimum: never negative beyond float32 noise


def test_linear_optimum_matches_lstsq_and_training_approaches_it() -> None:
    task = get_task("linear")
    x, y = (t.double().numpy() for t in task.extra["train_full"])
    _, mse = linear_optimum(x, y)
    assert abs(mse - task.optimum) < 1e-8  # float32-rounded inputs here
    res = train(task, "sgd", 0.05, 150)
    assert -1e-4 < res.final["gap"] < 0.05


def test_rosenbrock_adam_gets_close() -> None:
    res = train(get_task("rosenbrock"), "adam", 0.05, 800, schedule=False)
    assert res.final["dist"] < 0.3 and res.final["gap"] < 0.01  # from 12.5 at the start


def test_digits_mlp_learns() -> None:
    res = train(get_task("digits-mlp"), "adamw", 1e-2, 60)
    assert res.final["val_acc"] > 0.85


def test_resume_gives_identical_weights(tmp_path) -> None:
    task = get_task("digits-mlp")
    full = train(task, "muon", 0.02, 8, checkpoint_dir=tmp_path / "a")
    train(task, "muon", 0.02, 8, checkpoint_dir=tmp_path / "b", stop_at=5)
    resumed = train(task, "muon", 0.02, 8, checkpoint_dir=tmp_path / "b", resume=True)
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_make_optimizer_names() -> None:
    model = get_task("linear").model
    with pytest.raises(ValueError, match="adamw"):
        make_optimizer("adamx", model, 0.1)
    assert set(OPTIMIZERS) >= {"sgd", "adamw", "lion", "muon"}


def test_compare_summary_has_spread() -> None:
    res = compare("linear", ["sgd", "adam"], steps=20, seeds=2)
    rows = summarize(res, ["gap"])
    assert [r["seeds"] for r in rows] == [2, 2]
    assert all(r["gap_std"] is not None and r["gap_std"] >= 0 for r in rows)
    assert len(TASKS) >= 10
