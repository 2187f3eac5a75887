"""The descent command, in-process on tiny budgets: outputs, files, exit codes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch

from descent.cli.main import main

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_help_everywhere(capsys) -> None:
    assert main(["--help"]) == 0
    for cmd in ["demo", "train", "compare", "find-lr", "lab", "doctor", "bench", "tasks"]:
        assert main([cmd, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out


def test_usage_errors_exit_2_and_list_valid(capsys) -> None:
    assert main(["nope"]) == 2
    assert main(["compare", "--task", "nosuch", "--steps", "1"]) == 2
    assert "digits-mlp" in capsys.readouterr().err
    assert main(["compare", "--task", "linear", "--optimizers", "sgd,adamx", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "adamx" in err and "adamw" in err and "Traceback" not in err


def test_demo_writes_report_with_valid_pngs(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--steps", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ["sgd", "adamw", "lion", "muon"]:
        assert re.search(rf"^{name}\s", text, re.M), text
    html = (out / "report.html").read_text()
    refs = re.findall(r"href='([^']+\.png)'", html)
    assert {"lr_finder.png", "train_loss.png", "lr.png", "grad_norm.png", "compare_loss.png"} <= set(refs)
    for ref in refs:
        assert _is_png(out / ref), ref
    assert html.count("data:image/png;base64,") == len(refs)  # self-contained
    assert (out / "train.jsonl").exists()


def test_demo_json(tmp_path, capsys) -> None:
    assert main(["demo", "--quick", "--steps", "3", "--json", "--out", str(tmp_path)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {r["optimizer"] for r in payload["compare"]} == {"sgd", "adamw", "lion", "muon"}
    assert all(_is_png(Path(p)) for p in payload["plots"])


def test_compare_json_mean_spread(tmp_path, capsys) -> None:
    assert main(["compare", "--task", "linear", "--optimizers", "sgd,adamw", "--steps", "5", "--seeds", "2",
                 "--json", "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["seeds"] for r in rows] == [2, 2] and all(r["gap_std"] is not None for r in rows)
    assert _is_png(tmp_path / "compare_loss.png")


def test_compare_function_trajectories(tmp_path, capsys) -> None:
    assert main(["compare", "--task", "rosenbrock", "--optimizers", "sgd,adam", "--steps", "5", "--quiet",
                 "--out", str(tmp_path)]) == 0
    assert "dist" in capsys.readouterr().out
    assert _is_png(tmp_path / "trajectories.png")


def test_find_lr(tmp_path, capsys) -> None:
    assert main(["find-lr", "--task", "linear", "--num-iter", "30", "--out", str(tmp_path)]) == 0
    assert "suggested lr" in capsys.readouterr().out
    assert _is_png(tmp_path / "lr_finder.png")


def test_train_resume_exact(tmp_path, capsys) -> None:
    base = ["train", "--task", "digits-mlp", "--optimizer", "sgd", "--lr", "0.05", "--steps", "8",
            "--checkpoint-every", "4", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "full")]) == 0
    assert main(base + ["--out", str(tmp_path / "cut"), "--stop-at", "3"]) == 0  # interrupted after step 3
    ckpts = sorted((tmp_path / "cut" / "checkpoints").glob("ckpt-*.pt"))
    assert torch.load(ckpts[-1], weights_only=True)["step"] == 3
    assert main(base + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    full = torch.load(tmp_path / "full" / "checkpoints" / "ckpt-00000008.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "ckpt-00000008.pt", weights_only=True)
    assert cut["step"] == 8
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k])
    assert [r["loss"] for r in full["extra"]["history"]] == [r["loss"] for r in cut["extra"]["history"]]
    assert _is_png(tmp_path / "full" / "grad_norm.png")
    assert main(base + ["--out", str(tmp_path / "empty"), "--resume"]) == 1


def test_train_with_recipe(tmp_path, capsys) -> None:
    assert main(["train", "--task", "digits-mlp", "--recipe", "llm", "--steps", "5", "--quiet",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recipe llm" in out and "doctor" in out
    assert (tmp_path / "train.jsonl").exists()


def test_lab_lr_sensitivity_matches_torch(tmp_path, capsys) -> None:
    assert main(["lab", "lr-sensitivity", "--json", "--out", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["lr"] for r in res["runs"]] == [0.01, 0.1]
    assert all(len(r["descent"]) == 20 and r["max_abs_diff_vs_torch"] < 1e-5 for r in res["runs"])


def test_lab_batch_size(tmp_path, capsys) -> None:
    assert main(["lab", "batch-size", "--task", "linear", "--batch-sizes", "16,64", "--epochs", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "sqrt" in out


def test_doctor_jsonl_csv_and_errors(tmp_path, capsys) -> None:
    log = tmp_path / "run.jsonl"
    log.write_text("\n".join(json.dumps({"step": i, "loss": 2.3, "lr": 1e-7}) for i in range(100)))
    assert main(["doctor", str(log), "--json"]) == 0
    assert "plateau" in [f["code"] for f in json.loads(capsys.readouterr().out)["findings"]]
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "val_loss", "grad_norm", "lr"])
        for i in range(200):
            w.writerow([i, 1.0 / (1 + i), "", 1.0, 1e-3])
    assert main(["doctor", str(path)]) == 0
    assert "finding" in capsys.readouterr().out
    assert main(["doctor", str(tmp_path / "missing.jsonl")]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["doctor", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_doctor_tensorboard_without_package(tmp_path, capsys) -> None:
    ev = tmp_path / "events.out.tfevents.123.host"
    ev.write_bytes(b"\x00" * 16)
    code = main(["doctor", str(ev)])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert code == 1 and "tensorboard" in capsys.readouterr().err


def test_bench_tiny(capsys) -> None:
    assert main(["bench", "--only", "SGD", "--scale", "0.001", "--iters", "1", "--sets", "16M", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["results"] and res["bandwidth_gb_s"] > 0
    assert main(["bench", "--only", "NoSuch", "--scale", "0.001"]) == 2


def test_tasks_listing(capsys) -> None:
    assert main(["tasks", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert "mnist1d" in payload["tasks"] and payload["optimizers"]["adamw"]["description"]
