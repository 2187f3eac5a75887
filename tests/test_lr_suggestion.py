"""The LR suggestion against full training (a small benchmarks/lr_suggestion.py) and one answer everywhere."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "lr_suggestion.py"


def _bench():
    spec = importlib.util.spec_from_file_location("lr_suggestion_bench", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: a few half-decade lrs per optimizer (the benchmark's grid is wider and extends at its edges too)
_SCAN = {"sgd-nesterov": (-9, -7, -5, -3), "adamw": (-9, -7, -5, -3)}


@pytest.mark.slow  # 4 rows of grid + probes + a full run each: ~20-40 s on 2 loaded cores
@pytest.mark.parametrize("task", ["linear", "logistic"])
@pytest.mark.parametrize("optimizer", sorted(_SCAN))
def test_suggestion_within_25_percent_of_grid(task, optimizer):
    bench = _bench()
    r = bench.row(task, optimizer, seed=0, scan=_SCAN[optimizer])  # the benchmark's run length (100 steps)
    assert r["suggestion"] is not None, r["reason"]
    assert r["within25"], {k: r[k] for k in ("suggestion", "loss", "best_lr", "best_loss", "grid")}


@pytest.mark.slow  # two CLI runs with probes
def test_find_lr_and_train_auto_give_the_same_lr(tmp_path, capsys):
    from descent.cli.main import main

    assert main(["find-lr", "--task", "linear", "--steps", "40", "--json", "--quiet", "--out", str(tmp_path / "f")]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["method"] == "probe" and found["total_steps"] == 40
    assert found["low"] <= found["suggestion"] <= found["high"]
    assert main(["train", "--task", "linear", "--lr", "auto", "--steps", "40", "--json", "--quiet",
                 "--out", str(tmp_path / "t")]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["lr"] == pytest.approx(found["suggestion"], rel=1e-12)


def test_the_cli_and_the_benchmark_use_one_call():
    import inspect

    from descent.cli import demo, tools

    assert "find_task_lr" in inspect.getsource(tools.lr_range_test)
    assert "lr_range_test" in inspect.getsource(demo._find_lr) and "NUM_ITER" in inspect.getsource(demo._find_lr)
    assert "find_task_lr" in _PATH.read_text()


@pytest.mark.slow  # two finder runs with probes
def test_recipe_lr_auto_is_the_finder_suggestion():
    import descent
    from descent.tasks import get_task

    task = get_task("linear")
    data = [task.train.at(i) for i in range(100)]
    r = descent.recipe("convex", task.make_model(0), 60, lr="auto", batches=data, forward=task.loss)
    sched = descent.schedules.RobbinsMonro(tau=6.0, power=1.0)  # the convex recipe's schedule for 60 steps
    model = task.make_model(0)
    res = descent.find_lr(model, descent.SGD(model.parameters(), lr=0.1), data, forward=task.loss, total_steps=60,
                          schedule=sched)
    assert r.lr == pytest.approx(res.suggestion) and r.optimizer.param_groups[0]["lr"] == pytest.approx(r.lr)
    assert any(c == "lr" and "find_lr" in w for c, w, _ in r.explanations)
    with pytest.raises(ValueError, match="auto"):
        descent.recipe("convex", task.make_model(0), 60, lr="auto")


def test_cache_returns_the_run_it_stored(tmp_path, monkeypatch):
    bench = _bench()
    task = bench.make_task("linear", 0)
    bench.use_cache(str(tmp_path / "runs.json"))
    first = bench._val(task, "sgd", 0.01, 5, 0)
    assert json.loads((tmp_path / "runs.json").read_text()) == {"linear|sgd|0|5|0.01": first}
    fresh = _bench()  # a new process: the value comes from the file, no training
    fresh.use_cache(str(tmp_path / "runs.json"))
    monkeypatch.setattr(fresh, "train", lambda *a, **k: pytest.fail("trained although cached"))
    assert fresh._val(task, "sgd", 0.01, 5, 0) == first
    assert bench._val(task, "sgd", 0.02, 5, 0) != first  # another lr is another run
