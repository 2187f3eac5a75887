"""Each doctor rule fires on a real small run with its pathology and stays silent on healthy runs."""

import json
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


# ---------------------------------------------------------------- rules registry and typed view
def test_rules_are_registered_functions_over_a_typed_view():
    from descent.tools.doctor import RULES, History, Thresholds, rule

    assert tuple(RULES) == CODES and all(callable(r.fn) for r in RULES.values())

    @rule("always_test")
    def _always(h: History, t: Thresholds, notes: list) -> "Finding":
        from descent.tools._findings import Finding
        assert isinstance(h.loss, type(h.step)) and h.n == 30 and t.plateau_tol == 0.1
        return Finding("always_test", "info", "seen", {"n": h.n}, "none", "test")

    try:
        assert "always_test" in diagnose({"loss": [1.0] * 30}).codes
    finally:
        del RULES["always_test"]
    with pytest.raises(TypeError, match="Invalid threshold: nope"):
        diagnose({"loss": [1.0] * 30}, nope=1)


def test_repeated_steps_count_once_keeping_the_last():
    # a run killed after step 59 and resumed from its step-39 checkpoint: steps 40..59 logged twice
    first = [{"step": s, "loss": 2.0 * 0.98 ** s} for s in range(60)]
    second = [{"step": s, "loss": 2.0 * 0.98 ** s + 1e-3} for s in range(40, 100)]
    h = History.from_any(first + second)
    assert h.n == 100 and h.step.tolist() == list(range(100)) and h.loss[50] == pytest.approx(2 * 0.98 ** 50 + 1e-3)
    assert any("repeat" in n for n in diagnose(first + second).notes)


# ---------------------------------------------------------------- log files
from descent.reporting.logs import LogError, read_log  # noqa: E402
from descent.tools.doctor import History  # noqa: E402


def _jsonl(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def test_log_with_a_cut_last_line_is_read_and_said(tmp_path):
    rows = [{"step": i, "loss": 2.3, "lr": 1e-7} for i in range(50)]
    cols = read_log(_jsonl(tmp_path / "a.jsonl", rows, tail='{"step": 50, "lo'))
    assert len(cols["loss"]) == 50 and "incomplete" in cols.notes[0]
    found = diagnose(cols)
    assert found.codes == ["plateau"] and any("incomplete" in n for n in found.notes)
    csvp = tmp_path / "m.csv"
    csvp.write_text("step,loss,lr\n" + "".join(f"{i},2.3,1e-7\n" for i in range(30)) + "30,2.")
    cols = read_log(csvp)
    assert len(cols["loss"]) == 30 and "incomplete" in cols.notes[0]


def test_log_of_a_resumed_run_counts_each_step_once(tmp_path):
    rows = [{"step": s, "loss": 1.0} for s in range(120)] + [{"step": s, "loss": 0.5} for s in range(100, 200)]
    cols = read_log(_jsonl(tmp_path / "train.jsonl", rows))
    assert cols["step"] == [float(s) for s in range(200)] and cols["loss"][110] == 0.5
    assert any("twice" in n for n in cols.notes)


def test_non_numeric_value_is_a_malformed_line_not_a_nan_loss(tmp_path):
    rows = [{"step": i, "loss": 1.0 / (1 + i)} for i in range(60)]
    rows[10]["loss"] = "oops"
    rows[20]["grad_norm"] = "n/a"
    cols = read_log(_jsonl(tmp_path / "a.jsonl", rows))
    assert len(cols["loss"]) == 58 and all(math.isfinite(v) for v in cols["loss"])
    assert "malformed" in cols.notes[0] and "'oops'" in cols.notes[0]
    assert "nonfinite" not in diagnose(cols).codes
    rows[10]["loss"] = "NaN"  # what Monitor writes for a NaN loss (strict JSON): a real NaN
    cols = read_log(_jsonl(tmp_path / "b.jsonl", rows))
    assert math.isnan(cols["loss"][10]) and "nonfinite" in diagnose(cols).codes


def test_hf_trainer_state_log_history(tmp_path):
    hist = [{"epoch": i / 10, "grad_norm": 1.0, "learning_rate": 1e-7, "loss": 2.3, "step": i} for i in range(1, 41)]
    hist += [{"epoch": 4.0, "eval_loss": 2.3, "eval_runtime": 0.1, "step": 40},
             {"epoch": 4.0, "step": 40, "train_loss": 0.1, "train_runtime": 1.0, "total_flos": 0}]
    ckpt = tmp_path / "out" / "checkpoint-40"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 40, "log_history": hist}))
    cols = read_log(tmp_path / "out")
    assert cols.format == "trainer_state" and len(cols["loss"]) == 40
    assert cols["lr"][0] == 1e-7 and cols["grad_norm"][0] == 1.0 and cols["val_loss"][-1] == 2.3
    assert cols["loss"][-1] == 2.3  # the run summary's mean train_loss is not read as a step's loss
    assert diagnose(cols).codes == ["plateau"]


def test_lightning_csv_logger_columns(tmp_path):
    lines = ["epoch,lr-AdamW,step,train_loss_epoch,train_loss_step,val_loss"]
    for s in range(60):
        lines.append(f",{1e-7},{s},,," if s % 20 == 0 else "")
        lines.append(f"{s // 20},,{s},,{2.3},")
        if s % 20 == 19:
            lines.append(f"{s // 20},,{s},,,{2.3}")
            lines.append(f"{s // 20},,{s},2.3,,")
    path = tmp_path / "metrics.csv"
    path.write_text("\n".join(x for x in lines if x) + "\n")
    cols = read_log(path)
    assert len(cols["loss"]) == 60 and cols["lr"][0] == 1e-7 and cols["val_loss"].count(2.3) == 3
    assert not any("twice" in n for n in cols.notes)  # train and val rows of one step are merged
    assert diagnose(cols).codes == ["plateau"]


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for s in range(40):
        w.add_scalar("train/loss", 2.3, s)
        w.add_scalar("train/learning_rate", 1e-7, s)
        w.add_scalar("eval/loss", 2.4, s)
    w.close()
    cols = read_log(tmp_path / "tb")
    assert cols.format == "tensorboard" and len(cols["loss"]) == 40
    assert cols["loss"][0] == pytest.approx(2.3) and cols["val_loss"][0] == pytest.approx(2.4)
    assert cols["lr"][0] == pytest.approx(1e-7)
    with pytest.raises(LogError, match="no numeric loss"):
        read_log(_jsonl(tmp_path / "x.jsonl", [{"step": 1, "accuracy": 0.5}]))


def test_nan_after_a_steady_descent_is_nonfinite_not_divergence():
    # found by benchmarks/doctor_confusion.py: a NaN batch at step 150 of a healthy run
    loss = [2.0 * 0.99 ** i for i in range(150)] + [math.nan] * 50
    found = diagnose({"loss": loss})
    assert "nonfinite" in found.codes and "early_divergence" not in found.codes
    assert any("steady descent" in n for n in found.notes)
    rising = [2.0 * 0.99 ** i for i in range(100)] + [3.0 + i for i in range(20)] + [math.nan] * 10
    assert "early_divergence" in diagnose({"loss": rising}).codes
    assert "early_divergence" in diagnose({"loss": [2.0, 2.1, 2.0, 2.2, 2.1, 2.3] + [math.nan] * 30}).codes


def test_val_rise_small_next_to_the_progress_is_not_overfitting():
    # found by benchmarks/doctor_confusion.py: val 0.42 -> 0.030 -> 0.034 while the train loss -> 0.001
    loss = [2.0 * 0.97 ** i for i in range(300)]
    val = [0.42, 0.33, 0.22, 0.10, 0.06, 0.05, 0.04, 0.03, 0.031, 0.033, 0.034, 0.034]
    assert "overfitting" not in diagnose({"loss": loss, "val_loss": val}).codes
    val_over = [1.19, 0.72, 0.70, 0.72, 0.73, 0.74, 0.745, 0.75, 0.752, 0.753, 0.754, 0.755]
    assert "overfitting" in diagnose({"loss": loss, "val_loss": val_over}).codes


def test_confusion_benchmark_small(tmp_path):
    """benchmarks/doctor_confusion.py end to end (Monitor JSONL -> read_log -> diagnose) on two of its runs."""
    import dataclasses
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "doctor_confusion.py"
    spec = importlib.util.spec_from_file_location("doctor_confusion", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["doctor_confusion"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    by_name = {s.name: s for s in bench.SCENARIOS}
    nan = dataclasses.replace(by_name["digits-mlp AdamW, NaN injected at step 150"], steps=200)
    healthy = dataclasses.replace(by_name["digits-mlp AdamW, warmup+cosine"], steps=200)
    results = [bench.run(nan, 0, tmp_path / "nan.jsonl"), bench.run(healthy, 0, tmp_path / "ok.jsonl")]
    assert [r["ok"] for r in results] == [True, True], results
    table = bench.confusion(results)
    assert table["nonfinite"] == {"TP": 1, "FN": 0, "FP": 0, "TN": 1}


def test_cli_doctor_reads_a_log_being_written_and_a_trainer_folder(tmp_path, capsys):
    from descent.cli.main import main

    rows = [{"step": i, "loss": 2.3, "lr": 1e-7} for i in range(60)]
    log = _jsonl(tmp_path / "train.jsonl", rows + rows[50:], tail='{"step": 60, "loss": 2.')
    assert main(["doctor", str(log), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 60 and [f["code"] for f in out["findings"]] == ["plateau"]
    assert any("incomplete" in n for n in out["notes"]) and any("twice" in n for n in out["notes"])
    hist = [{"loss": 2.3, "learning_rate": 1e-7, "grad_norm": 1.0, "step": i} for i in range(1, 41)]
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "trainer_state.json").write_text(json.dumps({"log_history": hist}))
    assert main(["doctor", str(tmp_path / "hf")]) == 0
    assert "40 steps" in capsys.readouterr().out
