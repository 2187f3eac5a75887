"""Monitor and EarlyStopping on real digits runs."""

import math

import pytest
import torch
from torch import nn

import descent
from tools_runs import batches, dataset, mlp

torch.set_num_threads(1)


def test_records_every_quantity(tmp_path):
    x, y = dataset("digits")
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}],
                          lr=0.05, momentum=0.9)
    mon = descent.Monitor(ratio_every=5, jsonl=tmp_path / "live.jsonl")
    for step, (xb, yb) in enumerate(batches(x, y, 64, 20)):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mon.log(step, loss=loss, model=model, optimizer=opt, clip=norm, batch_size=64,
                val_loss=1.0 if step % 10 == 9 else None)
    mon.close()
    rec = mon.history[-1]
    assert rec["lrs"] == [0.05, 0.01] and rec["lr"] == 0.05
    assert set(rec["layer_grad_norm"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    # global norm = sqrt(sum of squared per-layer norms); read after clipping, so <= 1 + eps
    per = rec["layer_grad_norm"].values()
    assert rec["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in per)), rel=1e-5)
    assert rec["clip_norm"] > 0 and rec["nonfinite_grads"] == 0
    ratios = [r["update_ratio"] for r in mon.history if "update_ratio" in r]
    assert len(ratios) == 3 and all(0 < r < 1 for r in ratios)
    assert rec["samples_per_s"] > 0 and rec["val_loss"] == 1.0
    ema = mon.history[0]["loss_ema"]
    assert ema == pytest.approx(mon.history[0]["loss"])  # bias-corrected from the first step
    back = descent.Monitor.from_jsonl(tmp_path / "live.jsonl")
    assert [r["loss"] for r in back.history] == [r["loss"] for r in mon.history]
    mon.to_jsonl(tmp_path / "all.jsonl")
    assert len(descent.Monitor.from_jsonl(tmp_path / "all.jsonl")) == 20
    assert descent.diagnose(back).codes == descent.diagnose(mon).codes


def test_update_ratio_is_exact():
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    model = nn.Module(); model.p = p
    opt = torch.optim.SGD([p], lr=0.1)
    mon = descent.Monitor(ratio_every=1)
    for step in range(2):
        opt.zero_grad(); p.sum().backward(); opt.step()
        rec = mon.log(step, model=model, optimizer=opt)
    assert rec["update_ratio"] == pytest.approx(math.sqrt(0.02) / math.hypot(2.9, 3.9), rel=1e-5)


def test_counts_nonfinite_and_clip_fired():
    model = nn.Linear(2, 1)
    mon = descent.Monitor(clip_max_norm=0.5)
    model.weight.grad = torch.tensor([[float("nan"), 1.0]])
    model.bias.grad = torch.tensor([1.0])
    rec = mon.log(0, loss=float("inf"), model=model)
    assert rec["nonfinite_grads"] == 1 and rec["loss_nonfinite"] and rec["loss_ema"] is None
    model.weight.grad = torch.tensor([[1.0, 1.0]])
    assert mon.log(1, model=model)["clipped"] is True
    assert mon.log(2, clip=(0.3, False))["clipped"] is False


def test_attach_hook():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = descent.Monitor()
    handle = mon.attach(opt, model)
    for _ in range(3):
        opt.zero_grad(); loss = model(torch.ones(2, 3)).pow(2).mean(); loss.backward()
        mon.observe(loss=loss); opt.step()
    handle.remove()
    assert [r["step"] for r in mon.history] == [0, 1, 2] and all("grad_norm" in r for r in mon.history)


def test_bad_input():
    with pytest.raises(ValueError, match="ema"):
        descent.Monitor(ema=1.0)
    rec = descent.Monitor().log(0, model=nn.Linear(2, 2).requires_grad_(False))
    assert "grad_norm" not in rec  # no parameters with gradients: nothing recorded, no crash


# ----------------------------------------------------------------- early stopping
def test_early_stopping_patience_restores_best_on_real_overfit():
    x, y = dataset("digits")
    xt, yt, xv, yv = x[:60], y[:60], x[1400:], y[1400:]
    model = mlp(hidden=256, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    stop = descent.EarlyStopping(patience=3, min_delta=1e-4)
    vals = []
    for step, (xb, yb) in enumerate(batches(xt, yt, 64, 400)):
        opt.zero_grad(); nn.functional.cross_entropy(model(xb), yb).backward(); opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                vals.append(float(nn.functional.cross_entropy(model(xv), yv)))
            if stop.step(vals[-1], model):
                break
    assert stop.stopped and len(vals) < 40
    assert stop.best == min(vals) and stop.bad_count == 3
    assert stop.restore(model)
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(model(xv), yv)) == pytest.approx(stop.best, rel=1e-6)


def test_early_stopping_window_rule_matches_source():
    vals = [1.0, 0.9, 0.8, 0.7, 0.65, 0.6, 0.58, 0.57, 0.56, 0.55, 0.54, 0.6]
    stop = descent.EarlyStopping(rule="window", k=10)
    flags = [stop.step(v) for v in vals]
    # source: if len(h) > 10 and h[-1] > min(h[-10:-1]): stop
    expect = [len(vals[: i + 1]) > 10 and vals[i] > min(vals[: i + 1][-10:-1]) for i in range(len(vals))]
    assert flags == expect and flags[-1]


def test_early_stopping_modes_and_errors():
    s = descent.EarlyStopping(patience=1, mode="max")
    assert [s.step(v) for v in [0.5, 0.6, 0.6]] == [False, False, True]
    s2 = descent.EarlyStopping(patience=2)
    s2.load_state_dict(s.state_dict())
    assert s2.best == 0.6
    assert not descent.EarlyStopping().restore(nn.Linear(1, 1))
    assert descent.EarlyStopping(patience=2).step(float("nan")) is False
    with pytest.raises(ValueError, match="mode"):
        descent.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience"):
        descent.EarlyStopping(patience=-1)


def test_jsonl_is_strict_json_and_nonfinite_survives(tmp_path):
    import json

    from descent.reporting.logs import read_log

    model = nn.Linear(3, 1)
    mon = descent.Monitor(jsonl=tmp_path / "run.jsonl")
    for step, value in enumerate((1.0, float("nan"), float("inf"), 0.5)):
        model.weight.grad = torch.full_like(model.weight, value)
        mon.log(step, loss=value, model=model, custom={"x": -math.inf})
    mon.close()
    text = (tmp_path / "run.jsonl").read_text()

    def strict(token):
        raise ValueError(f"bare {token} token")

    rows = [json.loads(line, parse_constant=strict) for line in text.splitlines()]  # no NaN/Infinity tokens
    assert rows[1]["loss"] == "NaN" and rows[2]["loss"] == "Infinity" and rows[0]["custom"] == {"x": "-Infinity"}
    back = descent.Monitor.from_jsonl(tmp_path / "run.jsonl").history
    assert math.isnan(back[1]["loss"]) and back[2]["loss"] == math.inf and back[0]["custom"]["x"] == -math.inf
    cols = read_log(tmp_path / "run.jsonl")
    assert math.isnan(cols["loss"][1]) and descent.diagnose(cols).codes[0] == "nonfinite"


def test_tensorboard_carries_the_full_record(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.01}], lr=0.1)
    mon = descent.Monitor(tensorboard=tmp_path / "tb", clip_max_norm=1e-9)
    for step in range(3):
        opt.zero_grad()
        model(torch.ones(2, 3)).pow(2).sum().backward()
        opt.step()
        mon.log(step, loss=1.0 / (step + 1), model=model, optimizer=opt)
    mon.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "clipped", "nonfinite_grads", "lr/group_0", "lr/group_1",
            "grad_norm/0.weight", "grad_norm/1.bias"} <= tags, sorted(tags)
    assert [e.value for e in acc.Scalars("lr/group_1")] == pytest.approx([0.01] * 3)
    assert [e.value for e in acc.Scalars("clipped")] == [1.0] * 3


def test_clipped_is_inferred_from_the_norm_before_clipping():
    model = nn.Linear(3, 1)
    mon = descent.Monitor(clip_max_norm=1e-3)
    model(torch.ones(4, 3)).pow(2).sum().backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # grads now have norm 1e-3
    rec = mon.log(0, loss=1.0, model=model, clip=norm)
    assert rec["clipped"] is True and rec["clip_norm"] > 1e-3
