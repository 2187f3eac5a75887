"""Behaviour and peer parity of the optimizers of 2024 (issue 15).

The float64 parity with the paper references, the state_dict round trip and the
convergence facts run from the rows in ``tests/optim_db.py``; this file checks what
those rows cannot: parity with the peer packages (``schedulefree``, ``prodigyopt``,
pytorch-optimizer), schedule-free's modes, checkpoints and BatchNorm recalibration,
Prodigy's d on the built-in tasks, and cautious masking (SOAP: tests/test_soap.py).
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import descent
from descent import functional as F
from test_optim_common import _close, _groups, _init, _run
from optim_db import spec


def _pair(shapes=None, dtype=torch.float64):
    shapes = shapes or spec("ADOPT").shapes
    return ([torch.nn.Parameter(x) for x in _init(shapes, dtype)],
            [torch.nn.Parameter(x) for x in _init(shapes, dtype)])


# ------------------------------------------------------------------ peer packages
@pytest.mark.parametrize("kind,kwargs", [
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.8, weight_decay=0.1, warmup_steps=10, r=1.0)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=10, r=0.5, weight_lr_power=1.0)),
])
def test_schedule_free_matches_the_schedulefree_package(kind, kwargs):
    sf = pytest.importorskip("schedulefree")
    ours_cls = descent.ScheduleFreeSGD if kind == "sgd" else descent.ScheduleFreeAdamW
    peer_cls = sf.SGDScheduleFree if kind == "sgd" else sf.AdamWScheduleFree
    a, b = _pair()
    group2 = dict(lr=kwargs["lr"] / 4, weight_decay=0.05)
    ours = ours_cls([{"params": a[:4]}, {"params": a[4:], **group2}], **kwargs)
    peer = peer_cls([{"params": b[:4]}, {"params": b[4:], **group2}], foreach=False, **kwargs)
    peer.train()
    _run(ours, a)
    _run(peer, b)
    for pa, pb in zip(a, b):  # train mode: y
        _close(pa.detach(), pb.detach(), 1e-12)
        if pa in ours.state:
            _close(ours.state[pa]["z"], peer.state[pb]["z"], 1e-12)
    ours.eval()
    peer.eval()
    for pa, pb in zip(a, b):  # eval mode: x
        _close(pa.detach(), pb.detach(), 1e-12)


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1, use_bias_correction=True, growth_rate=1.5),
                                    dict(weight_decay=0.05, decouple=False, safeguard_warmup=True, d0=1e-4)])
def test_prodigy_matches_prodigyopt(kwargs):
    prodigyopt = pytest.importorskip("prodigyopt")
    a, b = _pair()
    ours = descent.Prodigy([{"params": a[:4]}, {"params": a[4:], "eps": 1e-6}], **kwargs)
    peer = prodigyopt.Prodigy([{"params": b[:4]}, {"params": b[4:], "eps": 1e-6}], **kwargs)
    _run(ours, a)
    _run(peer, b)
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), 1e-10)
    for key in ("d", "d_max", "k"):
        assert ours.param_groups[0][key] == pytest.approx(peer.param_groups[0][key], rel=1e-10)


def _simple_run(opt, params, steps=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("name", ["ADOPT", "AdEMAMix", "MARS"])
def test_matches_pytorch_optimizer(name):
    """pytorch-optimizer 3.x/4.x, on one group with every gradient present.

    Differences found and set aside here: pytorch-optimizer counts steps per group
    (descent per parameter, as torch does, which differs once a parameter misses a
    gradient); its AdEMAMix defaults to alpha=5 and coupled decay (the authors' code:
    alpha=2, decay in the update); its MARS runs AdamW on 1-D tensors unless
    ``optimize_1d=True`` (descent applies MARS to every tensor) and adds eps before the
    bias correction, ``(sqrt(v) + eps) / sqrt(1 - beta2^t)`` (descent, the paper and
    AdamW add it after), a 3e-7 difference here with eps=1e-8, so eps=0 for this check.
    """
    po = pytest.importorskip("pytorch_optimizer")
    shapes = ((6, 5), (4, 3), (7,))
    a, b = _pair(shapes)
    if name == "ADOPT":
        ours, peer = descent.ADOPT(a, lr=0.01), po.ADOPT(b, lr=0.01)
    elif name == "AdEMAMix":
        kw = dict(lr=0.01, alpha=2.0, t_alpha_beta3=20)
        ours, peer = descent.AdEMAMix(a, weight_decay=0.1, **kw), po.AdEMAMix(b, weight_decay=0.1,
                                                                            weight_decouple=True, **kw)
    else:
        kw = dict(lr=0.01, gamma=0.025, eps=0.0)
        ours, peer = descent.MARS(a, weight_decay=0.1, **kw), po.MARS(b, weight_decay=0.1, optimize_1d=True, **kw)
    _simple_run(ours, a)
    _simple_run(peer, b)
    for pa, pb in zip(a, b):
        _close(pa.detach(), pb.detach(), 1e-10)


# ------------------------------------------------------------------ schedule-free
def test_schedule_free_step_in_eval_mode_raises_and_modes_move_weights():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = descent.ScheduleFreeAdamW([w], lr=0.1)
    assert opt.training
    for _ in range(3):
        w.grad = torch.tensor([0.5, -0.5])
        opt.step()
    y = w.detach().clone()
    opt.eval()
    assert not opt.training and not torch.equal(w.detach(), y)
    opt.eval()  # idempotent
    w.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match=r"step\(\) called in eval mode.*optimizer.train\(\)"):
        opt.step()
    opt.train()
    torch.testing.assert_close(w.detach(), y)


def _bn_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3))


def _data(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) * 2 + 1
    y = (x[:, 0] + x[:, 1] > 2).long() + (x[:, 2] > 1).long()
    return x, y


def _train(net, opt, x, y, steps=60):
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for t in range(steps):
        i = slice((t * 32) % len(x), (t * 32) % len(x) + 32)
        opt.zero_grad()
        loss_fn(net(x[i]), y[i]).backward()
        opt.step()


def _metric(net, x, y):
    net.eval()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(net(x), y).item()


@pytest.mark.parametrize("cls", [descent.ScheduleFreeSGD, descent.ScheduleFreeAdamW])
def test_checkpoint_saved_in_train_mode_evaluates_like_eval_weights(cls):
    x, y = _data()
    net = _bn_net()
    opt = cls(net.parameters(), lr=0.05 if cls is descent.ScheduleFreeAdamW else 0.5)
    _train(net, opt, x, y)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)  # saved in train mode (y)
    opt.eval()
    expected = _metric(net, x, y)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    net2 = _bn_net(seed=1)
    net2.load_state_dict(ckpt["model"])
    opt2 = cls(net2.parameters())
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.training  # the mode came back with the state_dict
    y_metric = _metric(net2, x, y)
    opt2.eval()
    assert _metric(net2, x, y) == pytest.approx(expected, rel=1e-6)
    assert y_metric != pytest.approx(expected, rel=1e-6)
    # and the reloaded optimizer continues exactly as the original
    opt.train()
    opt2.train()
    _train(net, opt, x, y, steps=5)
    _train(net2, opt2, x, y, steps=5)
    for pa, pb in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(pa, pb, atol=0, rtol=0)


def test_state_dict_saved_in_eval_mode_restores_eval_mode():
    w = torch.nn.Parameter(torch.ones(3))
    opt = descent.ScheduleFreeSGD([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    opt.eval()
    other = descent.ScheduleFreeSGD([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert not other.training
    with pytest.raises(RuntimeError, match="eval mode"):
        other.step()


def test_recalibrate_batchnorm_gives_the_statistics_at_the_eval_point():
    x, y = _data()
    net = _bn_net()
    opt = descent.ScheduleFreeAdamW(net.parameters(), lr=0.05)
    _train(net, opt, x, y)
    batches = [x[i:i + 64] for i in range(0, len(x), 64)]
    net.eval()
    assert descent.recalibrate_batchnorm(net, batches, opt) == len(batches)
    assert not opt.training and not net.training  # weights at x; the model's mode is restored
    bn = net[1]
    with torch.no_grad():
        hs = [net[0](b) for b in batches]  # BatchNorm's input at x, per batch
    # momentum=None: the running statistics are the plain average of the batches' statistics
    torch.testing.assert_close(bn.running_mean, torch.stack([h.mean(0) for h in hs]).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, torch.stack([h.var(0) for h in hs]).mean(0), atol=1e-4, rtol=1e-4)
    assert bn.momentum == 0.1
    # the statistics left over from training (an EMA collected at the points y) are not these
    net2 = _bn_net()
    _train(net2, descent.ScheduleFreeAdamW(net2.parameters(), lr=0.05), x, y)
    assert (net2[1].running_mean - bn.running_mean).abs().max() > 1e-2
    with pytest.raises(ValueError, match="Invalid batches: empty"):
        descent.recalibrate_batchnorm(net, [])
    assert descent.recalibrate_batchnorm(torch.nn.Linear(2, 2), [torch.zeros(1, 2)]) == 0


# ------------------------------------------------------------------ Prodigy
BUILTIN = ["digits-mlp", "digits-cnn", "mnist1d", "charlm", "logistic", "linear"]


@pytest.mark.slow
@pytest.mark.parametrize("task_name", BUILTIN)
def test_prodigy_d_grows_on_every_builtin_task_with_the_default_d0(task_name):
    from descent.tasks import get_task

    task = get_task(task_name, **({"batch_size": 8, "ctx": 32} if task_name == "charlm" else {}))
    opt = descent.Prodigy(task.model.parameters())
    for t in range(20):
        opt.zero_grad()
        task.loss(task.model, task.train.at(t)).backward()
        opt.step()
    d = opt.param_groups[0]["d"]
    assert d > 100 * opt.param_groups[0]["d0"], d
    assert math.isfinite(d)


def test_prodigy_growth_rate_bounds_d():
    w = torch.nn.Parameter(torch.full((50,), 3.0))
    opt = descent.Prodigy([w], growth_rate=1.1)
    ds = []
    for _ in range(20):
        w.grad = w.detach() - 1.0
        opt.step()
        ds.append(opt.param_groups[0]["d"])
    # the first move away from d0 is free (as in prodigyopt); every later one is bounded
    ratios = [b / a for a, b in zip(ds[1:], ds[2:])]
    assert max(ratios) <= 1.1 + 1e-12 and ds[-1] > ds[1] * 1.1**10
    free = descent.Prodigy([torch.nn.Parameter(torch.full((50,), 3.0))])
    for _ in range(20):
        p = free.param_groups[0]["params"][0]
        p.grad = p.detach() - 1.0
        free.step()
    assert free.param_groups[0]["d"] > ds[-1]


# ------------------------------------------------------------------ cautious masking
def test_cautious_masks_disagreeing_coordinates_and_rescales():
    u = torch.tensor([1.0, -2.0, 3.0, 4.0])
    g = torch.tensor([1.0, 1.0, 1.0, -1.0])
    out = F.cautious(u, g)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 3.0, 0.0]) * (4 / 3))
    assert torch.equal(u, torch.tensor([1.0, -2.0, 3.0, 4.0]))  # input untouched


@pytest.mark.parametrize("cls", [descent.ADOPT, descent.AdEMAMix, descent.MARS])
def test_cautious_option_changes_the_step_only_where_signs_disagree(cls):
    a, b = _pair(((5, 4),))
    plain, caut = cls(a, lr=0.01), cls(b, lr=0.01, cautious=True)
    _simple_run(plain, a, steps=6)
    _simple_run(caut, b, steps=6)
    assert not torch.equal(a[0], b[0])


# ------------------------------------------------------------------ fair comparison (--tune)
def test_tuning_gives_every_optimizer_the_same_unit_cube_points():
    from descent.tasks.tuning import sample_space

    a, b = sample_space("adamw", "classification", 4), sample_space("lion", "classification", 4)
    assert [p["warmup"] for p in a] == [p["warmup"] for p in b]
    ratios = {round(math.log(pa["lr"] / pb["lr"]), 9) for pa, pb in zip(a, b)}
    assert len(ratios) == 1  # the same relative position in each one's lr range
    assert all(0 <= p["warmup"] <= 0.1 and p["weight_decay"] > 0 for p in a + b)


def test_compare_tune_reports_the_search_and_the_reruns(tmp_path, capsys):
    import json

    from descent.cli.main import main

    rc = main(["compare", "--task", "rosenbrock", "--optimizers", "adamw,sgd", "--steps", "10", "--tune", "2",
               "--seeds", "2", "--out", str(tmp_path / "cmp")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "search (2 trials each" in text and "| adamw |" in text and "| sgd |" in text
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    runs = saved["result"]["optimizers"]
    assert len(runs["adamw"]["search"]) == 2 and len(runs["sgd"]["runs"]) == 2
    assert main(["compare", "--task", "rosenbrock", "--optimizers", "adamw", "--tune", "2", "--lrs", "adamw=0.1",
                 "--out", str(tmp_path / "cmp2")]) == 2


def test_quality_benchmark_merges_split_runs_into_the_table_of_one_run(tmp_path):
    """benchmarks/optimizer_quality.py --merge: two processes' subsets give the one-process table."""
    import importlib.util
    import json
    from pathlib import Path

    from descent.tasks.tuning import compare_tuned, summarize, table

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "optimizer_quality.py"
    spec_ = importlib.util.spec_from_file_location("optimizer_quality", path)
    bench = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench)
    budget = dict(steps=10, trials=2, seeds=2, eval_every=2)
    files = []
    for names in (["adamw"], ["sgd"]):
        files.append(tmp_path / f"{names[0]}.json")
        files[-1].write_text(json.dumps([compare_tuned("rosenbrock", names, **budget)]))
    (joined,) = bench.merged([str(f) for f in files])
    whole = compare_tuned("rosenbrock", ["adamw", "sgd"], **budget)
    assert table("rosenbrock", summarize(joined)) == table("rosenbrock", summarize(whole))
    files.append(tmp_path / "other.json")
    files[-1].write_text(json.dumps([compare_tuned("rosenbrock", ["lion"], **{**budget, "steps": 12})]))
    with pytest.raises(ValueError, match="Invalid --merge: .*other.json ran rosenbrock"):
        bench.merged([str(f) for f in files])


@pytest.mark.parametrize("name", ["schedulefree-adamw", "adamw"])
def test_train_evaluates_schedule_free_at_the_average(name):
    """descent's train()/compare evaluate a schedule-free run at x and keep training at y."""
    from descent.tasks import get_task
    from descent.tasks.training import train

    task = get_task("linear")
    seen = []
    inner = task.evaluate_fn

    def spy(t, model):
        seen.append([p.detach().clone() for p in model.parameters()])
        return inner(t, model)

    task.evaluate_fn = spy
    res = train(task, name, lr=0.05, steps=15, schedule=False)
    final_weights = [p.detach() for p in res.model.parameters()]
    same = all(torch.equal(a, b) for a, b in zip(seen[-1], final_weights))
    assert same == (name == "adamw")


def test_sklearn_estimator_predicts_at_the_schedule_free_average():
    np = pytest.importorskip("numpy")
    pytest.importorskip("sklearn")
    from descent.sklearn import SGDRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=64)
    est = SGDRegressor(optimizer="schedulefreesgd", lr=0.05, max_iter=5, average=False, random_state=0).fit(X, y)
    opt = est._optim
    assert not opt.training  # fitted weights are the average x
    w = next(p for p in opt.param_groups[0]["params"] if p.numel() == 3)
    x_w = w.detach().clone().reshape(-1).numpy()
    assert np.allclose(est.coef_.reshape(-1), x_w)  # the estimator's coefficients are x
    opt.train()
    assert not np.allclose(w.detach().reshape(-1).numpy(), x_w)  # y differs
    opt.eval()
    est.partial_fit(X, y)  # continues from y, ends at x again
    assert not opt.training
