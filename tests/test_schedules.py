"""Schedules: formulas, parity with torch's schedulers step by step, resume, adapter behaviour, bad input."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as tl

import descent
from descent import schedules as S

BASE = 0.1


def _opt(lr: float = BASE, kind: str = "sgd", groups: int = 1) -> torch.optim.Optimizer:
    ps = [{"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], "lr": lr * (i + 1)}
          for i in range(groups)]
    if kind == "adam":
        return torch.optim.Adam(ps, lr=lr)
    return torch.optim.SGD(ps, lr=lr, momentum=0.9)


def _torch_lrs(make, steps: int, kind: str = "sgd", key: str = "lr") -> list[float]:
    opt = _opt(kind=kind)
    sched = make(opt)
    out = []
    for _ in range(steps):
        g = opt.param_groups[0]
        out.append(g[key] if key != "beta1" else g["betas"][0])
        opt.step()
        sched.step()
    return out


def _ours(schedule, steps: int, kind: str = "sgd", hyperparam: str = "lr") -> list[float]:
    opt = _opt(kind=kind)
    sched = S.Scheduler(opt, schedule, hyperparam)
    out = []
    for _ in range(steps):
        g = opt.param_groups[0]
        out.append(g[hyperparam] if hyperparam not in ("betas", "beta1") else g["betas"][0])
        opt.step()
        sched.step()
    return out


TORCH_PAIRS = {
    "StepLR": (lambda o: tl.StepLR(o, step_size=7, gamma=0.5), S.StepDecay(every=7, drop=0.5), 40),
    "MultiStepLR": (lambda o: tl.MultiStepLR(o, [5, 12, 30], gamma=0.3), S.MultiStep([5, 12, 30], 0.3), 40),
    "ExponentialLR": (lambda o: tl.ExponentialLR(o, gamma=0.93), S.Exponential(0.93), 40),
    "CosineAnnealingLR": (lambda o: tl.CosineAnnealingLR(o, T_max=30, eta_min=0.01),
                          S.Cosine(30, min_ratio=0.01 / BASE), 31),
    "LinearLR": (lambda o: tl.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=15),
                 S.Linear(0.2, 0.9, 15), 30),
    "CosineAnnealingWarmRestarts": (lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.001),
                                    S.CosineRestarts(5, 2, min_ratio=0.001 / BASE), 80),
    "CosineAnnealingWarmRestarts_mult1": (lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=6, eta_min=0.0),
                                          S.CosineRestarts(6), 40),
    "OneCycleLR": (lambda o: tl.OneCycleLR(o, max_lr=BASE, total_steps=50, pct_start=0.3),
                   S.OneCycle(50, pct_start=0.3), 50),
    "OneCycleLR_linear_3phase": (lambda o: tl.OneCycleLR(o, max_lr=BASE, total_steps=40, pct_start=0.25,
                                                         anneal_strategy="linear", three_phase=True,
                                                         div_factor=10, final_div_factor=100),
                                 S.OneCycle(40, 0.25, 10, 100, anneal="linear", three_phase=True), 40),
}


@pytest.mark.parametrize("name", sorted(TORCH_PAIRS))
def test_matches_torch_step_by_step(name: str) -> None:
    make, ours, steps = TORCH_PAIRS[name]
    ref = _torch_lrs(make, steps)
    got = _ours(ours, steps)
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)
    # and the same values through torch's own LambdaLR
    via_lambda = _torch_lrs(lambda o: tl.LambdaLR(o, ours), steps)
    assert via_lambda == pytest.approx(ref, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kind,hp", [("sgd", "momentum"), ("adam", "betas")])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_momentum_matches_torch(kind: str, hp: str, three_phase: bool) -> None:
    key = "momentum" if kind == "sgd" else "beta1"
    ref = _torch_lrs(lambda o: tl.OneCycleLR(o, max_lr=BASE, total_steps=30, three_phase=three_phase), 30, kind, key)
    opt = _opt(kind=kind)
    cycle = S.OneCycle(30, three_phase=three_phase)
    S.attach(opt, cycle)
    mom = S.attach(opt, cycle.momentum(0.85, 0.95), hp)
    got = []
    for _ in range(30):
        g = opt.param_groups[0]
        got.append(g["momentum"] if kind == "sgd" else g["betas"][0])
        opt.step()
        mom.step()
    assert got == pytest.approx(ref, rel=1e-12)
    if kind == "adam":
        assert opt.param_groups[0]["betas"][1] == 0.999


def _cos(p: float, r: float) -> float:
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))


FORMULAS = [
    (S.Constant(0.5), lambda t: 0.5),
    (S.StepDecay(10, 0.5), lambda t: 0.5 ** (t // 10)),
    (S.Exponential(0.5, 10, staircase=True), lambda t: 0.5 ** (t // 10)),
    (S.Exponential(0.9, 3, min_ratio=0.2), lambda t: max(0.9 ** (t / 3), 0.2)),
    (S.Cosine(50, 0.1), lambda t: _cos(min(t, 50) / 50, 0.1)),
    (S.CosineRestarts(10, cycle_decay=0.5), lambda t: 0.5 ** (t // 10) * 0.5 * (1 + math.cos(math.pi * (t % 10) / 10))),
    (S.LinearWarmup(20, 0.1), lambda t: 0.1 + 0.9 * min(t, 20) / 20),
    (S.WarmupCosine(100, warmup=10, min_ratio=0.1), lambda t: t / 10 if t < 10 else _cos(min((t - 10) / 90, 1), 0.1)),
    (S.WarmupCosine(200, warmup=0.05), lambda t: t / 10 if t < 10 else _cos(min((t - 10) / 190, 1), 0.0)),
    (S.WarmupLinear(100, warmup=20), lambda t: t / 20 if t < 20 else max(0.0, (100 - t) / 80)),
    (S.WarmupExponential(5, 0.5, 10), lambda t: t / 5 if t < 5 else 0.5 ** ((t - 5) / 10)),
    (S.InverseSqrt(), lambda t: 1 / math.sqrt(t + 1)),
    (S.InverseSqrt(warmup_steps=16), lambda t: t / 16 if t < 16 else math.sqrt(16 / t)),
    (S.RobbinsMonro(tau=5, power=0.75), lambda t: (1 + t / 5) ** -0.75),
    (S.WarmupStableDecay(100, warmup=10, decay=20),
     lambda t: t / 10 if t < 10 else (1.0 if t < 80 else 1 - min((t - 80) / 20, 1))),
    (S.WarmupStableDecay(100, warmup=10, decay=0.2, shape="sqrt", min_ratio=0.1),
     lambda t: t / 10 if t < 10 else (1.0 if t < 80 else 0.1 + 0.9 * (1 - math.sqrt(min((t - 80) / 20, 1))))),
    (S.join([S.LinearWarmup(10), S.Cosine(40), S.Constant(0.01)], [10, 50]),
     lambda t: t / 10 if t < 10 else (_cos((t - 10) / 40, 0.0) if t < 50 else 0.01)),
]


@pytest.mark.parametrize("i", range(len(FORMULAS)))
def test_formula(i: int) -> None:
    schedule, formula = FORMULAS[i]
    for t in range(0, 130):
        assert schedule(t) == pytest.approx(formula(t), rel=1e-12, abs=1e-15), (schedule, t)


def test_robbins_monro_and_inverse_sqrt_shape() -> None:
    rm = S.RobbinsMonro(tau=10)
    assert rm(0) == 1.0 and rm(10) == 0.5 and rm(30) == 0.25
    inv = S.InverseSqrt()
    assert inv(99) == pytest.approx(0.1)


def test_warmup_fraction_and_hf_equivalence() -> None:
    s = S.WarmupCosine(1000, warmup=0.02)
    assert s.warmup_steps == 20 and s(10) == 0.5 and s(20) == 1.0 and s(1000) == 0.0 and s(5000) == 0.0


def test_resume_mid_schedule_gives_identical_lrs(tmp_path) -> None:
    def run(resume_at: int | None) -> list[list[float]]:
        torch.manual_seed(0)
        opt = descent.AdamW([{"params": [torch.nn.Parameter(torch.randn(3))]},
                             {"params": [torch.nn.Parameter(torch.randn(2))], "lr": 0.01}], lr=1e-3)
        plateau = S.ReduceLROnPlateau(factor=0.5, patience=1)
        sched = S.Scheduler(opt, {0: S.WarmupCosine(60, warmup=10), 1: S.join([S.LinearWarmup(5), plateau], [5])})
        lrs = []
        for t in range(40):
            for p in (q for g in opt.param_groups for q in g["params"]):
                p.grad = torch.full_like(p, 0.1)
            opt.step()
            sched.step()
            if t % 4 == 3:
                sched.report(1.0)  # a flat validation loss: plateau reduces
            lrs.append([g["lr"] for g in opt.param_groups])
            if resume_at is not None and t == resume_at:
                buf = io.BytesIO()
                torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
                buf.seek(0)
                ck = torch.load(buf, weights_only=True)
                params = [torch.nn.Parameter(p.detach().clone()) for g in opt.param_groups for p in g["params"]]
                opt = descent.AdamW([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}], lr=1e-3)
                opt.load_state_dict(ck["opt"])
                plateau = S.ReduceLROnPlateau(factor=0.5, patience=1)
                sched = S.Scheduler(opt, {0: S.WarmupCosine(60, warmup=10),
                                          1: S.join([S.LinearWarmup(5), plateau], [5])})
                sched.load_state_dict(ck["sched"])
                assert [g["lr"] for g in opt.param_groups] == lrs[-1]
        return lrs

    straight = run(None)
    resumed = run(17)
    assert resumed == straight
    assert straight[-1][1] < 0.01 * 0.2  # the plateau did reduce


def test_plateau_matches_torch() -> None:
    metrics = [1.0, 0.9, 0.9, 0.91, 0.9, 0.85, 0.85, 0.85, 0.85, 0.849999, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    for kw in ({"mode": "min", "patience": 1, "cooldown": 1}, {"mode": "max", "patience": 0, "threshold_mode": "abs",
                                                                "threshold": 0.05}, {"min_lr": 0.02, "patience": 0}):
        ref_opt = _opt()
        ref = tl.ReduceLROnPlateau(ref_opt, factor=0.5, **kw)
        opt = _opt()
        sched = S.Scheduler(opt, S.ReduceLROnPlateau(factor=0.5, **kw))
        for m in metrics:
            ref.step(m)
            sched.report(m)
            assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12), kw


def test_plateau_after_warmup_ignores_metrics_during_warmup() -> None:
    opt = _opt()
    plateau = S.ReduceLROnPlateau(factor=0.5, patience=0)
    sched = S.Scheduler(opt, S.join([S.LinearWarmup(5), plateau], [5]))
    for t in range(10):
        opt.step()
        sched.step()
        sched.report(1.0)
    # reports at steps 1..10; only those at 5..10 reach the plateau; the first sets the best
    assert plateau.num_reductions == 5
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE * 0.5 ** 5)


def test_per_group_schedules_and_weight_decay() -> None:
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.1},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}], lr=1.0)
    lr = S.attach(opt, [S.LinearWarmup(4), None])
    wd = S.attach(opt, {0: S.Linear(1.0, 0.0, 4)}, "weight_decay")
    for _ in range(2):
        opt.step()
        lr.step()
        wd.step()
    assert [g["lr"] for g in opt.param_groups] == [0.5, 1.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [pytest.approx(0.05), 0.0]
    assert isinstance(lr, torch.optim.lr_scheduler.LRScheduler)
    assert lr.get_last_lr() == [0.5, 1.0]


def test_skipped_optimizer_step_does_not_advance() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = descent.SGD([p], lr=1.0, skip_nonfinite=True)
    sched = S.Scheduler(opt, S.LinearWarmup(10))
    for grad in ([1.0, 1.0], [math.inf, 0.0], [1.0, 1.0]):
        p.grad = torch.tensor(grad)
        opt.step()
        sched.step()
    assert sched.last_epoch == 2 and sched.skipped == 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)


def test_per_epoch_stepping_of_a_step_schedule_warns() -> None:
    opt = _opt()
    sched = S.Scheduler(opt, S.WarmupCosine(1000, warmup=100), steps_per_epoch=10)
    with pytest.warns(UserWarning, match="too rarely"):
        for _ in range(10):
            opt.step()
        sched.step()
    assert sched.cadence["optimizer_steps_per_schedule_step"] == 10
    assert sched.cadence["horizon"] == 1000
    # intended per-epoch use and per-step use stay silent
    for unit, per_call in (("epoch", 10), ("step", 1)):
        opt = _opt()
        sched = S.Scheduler(opt, S.StepDecay(3), unit=unit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                for _ in range(per_call):
                    opt.step()
                sched.step()
        assert sched.cadence is None


@pytest.mark.parametrize("make,needle", [
    (lambda: S.Cosine(100)(-1), "-1"),
    (lambda: S.LinearWarmup(5)(2.5), "2.5"),
    (lambda: S.WarmupCosine(100, warmup=150), "150"),
    (lambda: S.WarmupCosine(100, warmup=1.5), "1.5"),
    (lambda: S.WarmupLinear(100, warmup=-3), "-3"),
    (lambda: S.WarmupStableDecay(100, warmup=50, decay=60), "60"),
    (lambda: S.ReduceLROnPlateau(factor=1.5), "1.5"),
    (lambda: S.ReduceLROnPlateau(factor=0.0), "0.0"),
    (lambda: S.ReduceLROnPlateau(mode="low"), "low"),
    (lambda: S.StepDecay(0), "0"),
    (lambda: S.StepDecay(5, drop=2.0), "2.0"),
    (lambda: S.Cosine(-10), "-10"),
    (lambda: S.OneCycle(100, pct_start=1.2), "1.2"),
    (lambda: S.MultiStep([10, 5]), "[10, 5]"),
    (lambda: S.join([S.Constant(), S.Constant()], [5, 6]), "boundaries"),
    (lambda: S.Scheduler(_opt(), S.Constant(), "nesterov_gamma"), "nesterov_gamma"),
    (lambda: S.Scheduler(_opt(groups=2), {3: S.Constant()}), "[3]"),
])
def test_bad_input_raises_with_value(make, needle: str) -> None:
    with pytest.raises(ValueError, match="Invalid") as err:
        make()
    assert needle in str(err.value)


def test_step_with_metric_advances_once_and_feeds_plateau() -> None:
    """Lightning with reduce_on_plateau=True calls scheduler.step(metric) every step (issue 18)."""
    opt = _opt()
    plateau = S.ReduceLROnPlateau(factor=0.5, patience=0)
    sched = S.Scheduler(opt, S.join([S.LinearWarmup(4), plateau], [4]))
    metric = torch.tensor(1.7)  # the last validation value: the same tensor every step until the next one
    for t in range(32):
        opt.step()
        if t % 8 == 7:
            metric = torch.tensor(1.7)  # a new evaluation (a new tensor), no better than the last
        sched.step(metric)
    assert sched.last_epoch == 32
    # t=0's value reached the warmup (ignored there); evaluations at t=7 (sets the best), 15, 23, 31:
    # three bad evaluations with patience 0 -> three reductions, not one per step
    assert plateau.num_reductions == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE * 0.5 ** 3)
    sched.step(7)  # an int is torch's (deprecated) epoch: jump there
    assert sched.last_epoch == 7 and plateau.num_reductions == 3


def test_one_cycle_momentum_reaches_muon_like_torch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    ours = descent.Muon(model, lr=0.02)
    ref = torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02)
    moms = []
    for opt in (ours, ref):
        cycle = tl.OneCycleLR(opt, max_lr=0.02, total_steps=50)
        for _ in range(10):
            opt.step()
            cycle.step()
        moms.append(opt.param_groups[0]["momentum"])
    assert moms[0] == moms[1] < 0.95
    aux = next(g for g in ours.param_groups if not g["use_muon"])
    assert aux["betas"] == (0.9, 0.95)
