"""Each doctor rule fires on a real small run with its pathology and stays silent on healthy runs."""

import math

import pytest
import torch

from descent.tools.doctor import CODES, diagnose
from tools_runs import digits_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def healthy():
    return [digits_run(lr=3e-3), digits_run(lr=0.05, opt="sgd"), digits_run(lr=0.05, opt="sgd", clip=100.0)]


def _lambda_warmup_cosine(warmup, total):
    def f(t):
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / max(1, total - warmup))))
    return f


PATHOLOGIES = {
    "early_divergence": dict(lr=0.5),                        # Adam lr far too large
    "nonfinite": dict(lr=1.5, opt="sgd"),                    # SGD lr too large -> Inf/NaN
    "oscillation": dict(lr=0.3, opt="sgd", momentum=0.9),    # too large a step with momentum
    "plateau": dict(lr=1e-6),                                # lr too small
    "overfitting": dict(lr=3e-3, n_train=60, hidden=256, depth=2, steps=400),  # tiny train set, big model
    "clip_saturation": dict(lr=0.05, opt="sgd", clip=0.05),  # threshold far below the grad norm
    # warmup+cosine written in epochs of 10 steps but sized in steps: stepped once per epoch
    "schedule_per_epoch": dict(lr=3e-3, sched_every=10, schedule=lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, _lambda_warmup_cosine(5, 30))),
}


def test_every_code_has_a_pathology_run():
    assert set(PATHOLOGIES) == set(CODES)


@pytest.mark.parametrize("code", sorted(PATHOLOGIES))
def test_rule_fires_on_pathology(code):
    found = diagnose(digits_run(**PATHOLOGIES[code]))
    assert code in found.codes, (found.codes, found.notes)
    f = next(x for x in found if x.code == code)
    assert f.fix and f.source and f.evidence


def test_healthy_runs_are_silent(healthy):
    for mon in healthy:
        found = diagnose(mon)
        assert found.codes == [], [str(f) for f in found]


def test_per_step_schedule_is_silent():
    mon = digits_run(lr=3e-3, schedule=lambda o: torch.optim.lr_scheduler.LambdaLR(o, _lambda_warmup_cosine(15, 300)))
    assert "schedule_per_epoch" not in diagnose(mon).codes


def test_accepts_history_list_and_columns(healthy):
    mon = digits_run(**PATHOLOGIES["plateau"])
    assert diagnose(mon.history).codes == diagnose(mon.columns()).codes == ["plateau"]
    cols = {k: mon.columns()[k] for k in ("loss", "lr", "grad_norm")}
    assert diagnose(cols).codes == ["plateau"]


def test_evidence_names_steps():
    f = next(x for x in diagnose(digits_run(**PATHOLOGIES["early_divergence"])) if x.code == "early_divergence")
    assert 0 <= f.evidence["step"] < 300 and f.evidence["value"] > f.evidence["min_value"]


def test_bad_input():
    empty = diagnose({"loss": []})
    assert empty == [] and "no loss" in empty.notes[0]
    never = diagnose({"loss": [float("nan")] * 50})
    assert never.codes == ["nonfinite"] and any("finite" in n for n in never.notes)
    with pytest.raises(ValueError, match="no 'loss' column"):
        diagnose({"val_loss": [1.0]})
    with pytest.raises(ValueError, match="Invalid history"):
        diagnose(42)
    with pytest.raises(ValueError, match="rows"):
        diagnose({"loss": [1.0, 2.0], "lr": [1.0]})


def test_val_loss_shorter_column():
    loss = [2.0 * 0.99 ** i for i in range(200)]
    val = [1.0, 0.8, 0.7, 0.75, 0.9, 1.1, 1.3, 1.5]
    assert "overfitting" in diagnose({"loss": loss, "val_loss": val}).codes
    assert "overfitting" not in diagnose({"loss": loss, "val_loss": sorted(val, reverse=True)}).codes
