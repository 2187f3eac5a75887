"""LR finder: exact restoration, divergence stop, multi-group ratios, suggestion vs a grid search."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import descent
from descent.tools.lr_finder import suggest_lr
from tools_runs import batches, dataset, mlp

torch.set_num_threads(1)
CE = nn.functional.cross_entropy


def _task(name, opt):
    x, y = dataset(name)
    torch.manual_seed(0)
    model = mlp() if name == "digits" else nn.Linear(30, 2)
    return model, opt(model.parameters()), x, y


def _train(name, opt, lr, steps=300):
    model, o, x, y = _task(name, opt)
    for g in o.param_groups:
        g["lr"] = lr
    for xb, yb in batches(x, y, 32, steps):
        o.zero_grad()
        CE(model(xb), yb).backward()
        o.step()
    with torch.no_grad():
        return float(CE(model(x), y))


TASKS = {
    "digits_mlp_adam": ("digits", lambda p: torch.optim.Adam(p, lr=1e-3)),
    "digits_mlp_sgd_momentum": ("digits", lambda p: descent.SGD(p, lr=0.1, momentum=0.9)),
    "breast_cancer_logreg_adam": ("cancer", lambda p: torch.optim.Adam(p, lr=0.1)),
}


@pytest.mark.slow  # 15 full training runs per task
@pytest.mark.parametrize("task", sorted(TASKS))
def test_suggestion_within_3x_of_grid_search(task):
    name, opt = TASKS[task]
    grid = np.geomspace(1e-4, 10, 15)
    final = [_train(name, opt, lr) for lr in grid]
    best = grid[int(np.nanargmin(final))]
    model, o, x, y = _task(name, opt)
    res = descent.find_lr(model, o, batches(x, y, 32, 100, seed=1), CE, start_lr=1e-6, end_lr=10)
    assert res.method == "valley" and res.suggestion is not None
    assert best / 3 <= res.suggestion <= best * 3, (res.suggestions, best)


def test_restores_model_optimizer_rng_exactly():
    model, o, x, y = _task("digits", lambda p: descent.AdamW(p, lr=1e-3))
    data = batches(x, y, 32, 20)
    for xb, yb in data[:3]:  # non-empty optimizer state
        o.zero_grad(); CE(model(xb), yb).backward(); o.step()
    import copy
    twin, o2 = copy.deepcopy(model), None
    o2 = type(o)(twin.parameters(), lr=1e-3)
    o2.load_state_dict(copy.deepcopy(o.state_dict()))
    before = ({k: v.clone() for k, v in model.state_dict().items()}, str(o.state_dict()), torch.get_rng_state())
    grads = [p.grad.clone() for p in model.parameters()]
    descent.find_lr(model, o, data, CE, num_iter=30)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before[0].items())
    assert str(o.state_dict()) == before[1] and torch.equal(torch.get_rng_state(), before[2])
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    # continuing training gives bit-identical results to a copy that never ran the finder
    for m, opt in ((model, o), (twin, o2)):
        for xb, yb in data[3:8]:
            opt.zero_grad(); CE(m(xb), yb).backward(); opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_restores_on_exception():
    model, o, x, y = _task("digits", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def bad_loss(out, target):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return CE(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        descent.find_lr(model, o, batches(x, y, 32, 10), bad_loss, num_iter=20)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    assert o.param_groups[0]["lr"] == 0.1 and len(o.state) == 0


def test_divergence_stop_and_multigroup_ratio():
    model, _, x, y = _task("digits", lambda p: None)
    groups = [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 1e-4}]
    o = torch.optim.SGD(groups, momentum=0.9)
    seen = []
    orig = o.step

    def step(*a, **k):
        seen.append([g["lr"] for g in o.param_groups])
        return orig(*a, **k)

    o.step = step
    res = descent.find_lr(model, o, batches(x, y, 32, 100), CE, num_iter=100, diverge_threshold=4.0)
    assert res.stopped_early is not None and len(res.lrs) < 100
    assert all(abs(b / a - 0.1) < 1e-9 for a, b in seen)
    assert [g["lr"] for g in o.param_groups] == [1e-3, 1e-4]
    assert res.group_lrs[1] == pytest.approx(res.suggestion * 0.1)
    assert max(res.smoothed[:-1]) <= 4.0 * min(res.smoothed) + 1e-9


def test_linear_mode_and_methods_and_plot(tmp_path):
    model, o, x, y = _task("digits", lambda p: torch.optim.Adam(p, lr=1e-3))
    res = descent.find_lr(model, o, batches(x, y, 32, 60), CE, start_lr=1e-4, end_lr=0.5, num_iter=60, mode="linear")
    assert np.allclose(np.diff(res.lrs), np.diff(res.lrs)[0])
    assert set(res.suggestions) == {"valley", "steepest", "min_loss"}
    res.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_bias_corrected_smoothing():
    model, o, x, y = _task("cancer", lambda p: torch.optim.SGD(p, lr=0.1))
    res = descent.find_lr(model, o, batches(x, y, 32, 30), CE, num_iter=30, start_lr=1e-7, end_lr=1e-6)
    assert res.smoothed[0] == pytest.approx(res.losses[0])  # no zero-initialisation bias
    assert res.suggestion is None or res.notes


def test_bad_input():
    model, o, x, y = _task("digits", lambda p: torch.optim.SGD(p, lr=0.1))
    data = batches(x, y, 32, 5)
    with pytest.raises(ValueError, match="end_lr"):
        descent.find_lr(model, o, data, CE, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="mode"):
        descent.find_lr(model, o, data, CE, mode="cubic")
    with pytest.raises(ValueError, match="no batch"):
        descent.find_lr(model, o, [], CE)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        descent.find_lr(frozen, torch.optim.SGD(frozen.parameters(), lr=0.1), data, CE)
    nan = descent.find_lr(model, o, data, lambda out, t: out.sum() * float("nan"), num_iter=10)
    assert nan.suggestion is None and nan.lrs == [] and "no finite loss" in nan.notes[0]
    assert suggest_lr([1e-3, 1e-2, 1e-1, 1.0], [1.0, 1.1, 1.2, 1.3], skip_start=0) is None


# ----------------------------------------------------------------- suggestion for a run (total_steps)
def _linear_problem():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.linspace(-2, 2, 8)[:, None] + 0.1 * torch.randn(512, 1)
    model = nn.Linear(8, 1)
    return model, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 512, 32)]


def test_total_steps_probes_restore_and_range():
    model, data = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sched = descent.schedules.WarmupCosine(120, warmup=0.1, min_ratio=0.1)
    res = descent.find_lr(model, opt, data, nn.functional.mse_loss, num_iter=60, total_steps=120, schedule=sched)
    assert res.method == "probe" and res.total_steps == 120 and res.reason is None
    assert res.low <= res.suggestion <= res.high and len(res.probes) >= 7
    assert res.suggestion < res.lrs[int(np.argmin(res.smoothed))]  # below the range test's edge
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert opt.param_groups[0]["lr"] == 0.1 and len(opt.state) == 0
    # the probe's lr is good for the run: a full run at it is within 25 % of the best of a grid
    def final(lr):
        m, d = _linear_problem()
        o = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
        for s in range(120):
            for g in o.param_groups:
                g["lr"] = lr * sched(s)
            o.zero_grad(); nn.functional.mse_loss(m(d[s % len(d)][0]), d[s % len(d)][1]).backward(); o.step()
        with torch.no_grad():
            return float(sum(nn.functional.mse_loss(m(a), b) for a, b in d)) / len(d)
    grid = [final(lr) for lr in np.geomspace(1e-3, 0.3, 11)]
    best = min(v for v in grid if np.isfinite(v))
    assert final(res.suggestion) <= 1.25 * best + 1e-3, (res.suggestion, grid)


def test_probes_follow_the_compressed_schedule():
    model, data = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen, orig = [], opt.step

    def step(*a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return orig(*a, **k)

    opt.step = step
    sched = descent.schedules.Linear(1.0, 0.0, 400)  # decays to 0 over the run
    res = descent.find_lr(model, opt, data, nn.functional.mse_loss, num_iter=30, total_steps=400, schedule=sched,
                          probe_steps=40)
    lrs = np.array(seen[len(res.lrs):])
    starts = [0] + [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1]]  # the schedule decays within a probe
    full = [lrs[a:a + 40] for a, b in zip(starts, starts[1:] + [len(lrs)]) if b - a == 40]
    assert len(full) >= 3
    for probe in full:  # step s of a 40-step probe is step 10 s of the 400-step run
        assert np.allclose(probe / probe[0], [sched(s * 10) for s in range(40)])


@pytest.mark.parametrize("case, expect", [("flat", "no descent"), ("nan", "diverged at once"),
                                          ("high", "diverged at once"), ("noise", "noisy")])
def test_unusable_curves_say_why(case, expect):
    model, data = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    losses = {"flat": lambda out, t: (out * 0).sum() + 1.0,
              "nan": lambda out, t: out.sum() * float("nan"),
              "noise": lambda out, t: 0.005 * nn.functional.mse_loss(out, t) + torch.rand((), generator=gen),
              "high": nn.functional.mse_loss}[case]
    start = 50.0 if case == "high" else 1e-7
    res = descent.find_lr(model, opt, data, losses, start_lr=start, end_lr=start * 1e8, num_iter=60, total_steps=50)
    assert res.reason is not None and res.reason.startswith(expect), res.reason
    assert (res.suggestion is None) == (case != "noise")  # a noisy curve still gets its probes


def test_total_steps_bad_input():
    model, data = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        descent.find_lr(model, opt, data, nn.functional.mse_loss, total_steps=1)
    with pytest.raises(ValueError, match="schedule"):
        descent.find_lr(model, opt, data, nn.functional.mse_loss, total_steps=10, schedule=0.5)
    with pytest.raises(ValueError, match="one-shot"):
        descent.find_lr(model, opt, iter(data), nn.functional.mse_loss, total_steps=10)
    with pytest.raises(ValueError, match="probe_steps"):
        descent.find_lr(model, opt, data, nn.functional.mse_loss, total_steps=10, probe_steps=0)


def test_probe_search_reads_the_vertex_of_the_valley():
    from descent.tools import _lr_probe

    star = 10.0 ** -1.07  # between two quarter-decade probes below the edge 1.0 (k = 4.28)
    found = _lr_probe.search(lambda lr: (math.log10(lr) - math.log10(star)) ** 2 + 0.3, 1.0, 50, 50)
    assert found.best == pytest.approx(star, rel=1e-9)  # exact on a parabola; the lowest probe is 0.1
    assert found.low <= found.best <= found.high
    # with a diverged neighbour the lowest probe is kept; the run-length factor still applies
    found = _lr_probe.search(lambda lr: math.inf if lr > 0.11 else (math.log10(lr) + 1.0) ** 2, 1.0, 25, 100)
    assert found.best == pytest.approx(0.1 * 0.5, rel=1e-9)
