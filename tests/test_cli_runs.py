"""``descent train`` run folders never lose work: refusals, honest resume, corrupt checkpoints, the log, kill -9.

Also: the command without its optional dependencies (matplotlib, scikit-learn, tqdm, ...).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from descent.cli.main import main

BASE = ["train", "--task", "digits-mlp", "--optimizer", "sgd", "--lr", "0.05", "--checkpoint-every", "2",
        "--eval-every", "0", "--quiet"]
README = Path(__file__).resolve().parents[1] / "README.md"


def _steps(log: Path) -> list[int]:
    return [json.loads(line)["step"] for line in log.read_text().splitlines()]


def _ckpts(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt"))


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_values_or_a_new_run_never_touch_an_existing_run(tmp_path, capsys) -> None:
    out = str(tmp_path / "full")
    assert main(BASE + ["--steps", "6", "--out", out]) == 0
    before = ((tmp_path / "full" / "train.jsonl").read_bytes(), _ckpts(tmp_path / "full"))
    for bad in (["--lr", "-1"], ["--steps", "0"], ["--steps", "-5"], []):  # [] = a valid new run
        code = main(["train", "--task", "digits-mlp", "--steps", "3", "--quiet", "--out", out] + bad)
        assert code == 2, bad
        err = _err(capsys)
        if not bad:
            assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert ((tmp_path / "full" / "train.jsonl").read_bytes(), _ckpts(tmp_path / "full")) == before
    assert main(BASE + ["--steps", "3", "--out", out, "--overwrite"]) == 0
    assert _ckpts(tmp_path / "full") == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    assert _steps(tmp_path / "full" / "train.jsonl") == [0, 1, 2]
    cfg = json.loads((tmp_path / "full" / "run.json").read_text())
    assert (cfg["steps"], cfg["optimizer"], cfg["lr"], cfg["completed_steps"]) == (3, "sgd", 0.05, 3)


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    assert main(BASE + ["--steps", "4", "--out", str(out)]) == 0
    before = ((out / "train.jsonl").read_bytes(), _ckpts(out), (out / "run.json").read_bytes())

    import descent.tasks.training as training

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(training, "train", crash)
    for _ in range(2):  # a second failed overwrite must not lose the set-aside run either
        assert main(BASE + ["--steps", "3", "--out", str(out), "--overwrite"]) == 1
        assert "simulated" in _err(capsys)
        aside = out / ".replaced"
        assert ((aside / "train.jsonl").read_bytes(), _ckpts(aside), (aside / "run.json").read_bytes()) == before
    monkeypatch.undo()
    assert main(BASE + ["--steps", "3", "--out", str(out), "--overwrite"]) == 0
    assert not (out / ".replaced").exists() and _ckpts(out) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]


def test_resume_refuses_changed_settings_and_states_what_it_resumes(tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(BASE + ["--steps", "6", "--stop-at", "4", "--out", out]) == 0
    capsys.readouterr()
    code = main(["train", "--optimizer", "lion", "--lr", "0.5", "--steps", "8", "--resume", "--out", out])
    assert code == 2
    err = _err(capsys)
    assert "--optimizer lion (the run has sgd)" in err and "--lr 0.5 (the run has 0.05)" in err
    assert main(["train", "--task", "charlm", "--resume", "--out", out, "--allow-changes"]) == 2  # never allowed
    assert "--task charlm (the run has digits-mlp)" in _err(capsys)
    assert main(["train", "--lr", "0.02", "--resume", "--out", out]) == 2
    assert "--allow-changes" in _err(capsys)
    # the recorded settings are used when none are given; the resume is stated
    assert main(["train", "--resume", "--out", out, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["resumed"].startswith(f"resuming {out} at step 4 of 6")
    assert "sgd lr=0.05" in payload["resumed"] and payload["optimizer"] == "sgd" and payload["lr"] == 0.05
    assert _steps(tmp_path / "run" / "train.jsonl") == list(range(6))


def test_allow_changes_applies_the_new_lr(tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(BASE + ["--steps", "6", "--stop-at", "2", "--out", out]) == 0
    capsys.readouterr()
    assert main(["train", "--lr", "0.01", "--resume", "--allow-changes", "--out", out, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["lr"] == 0.01 and any("0.05 -> 0.01" in n for n in payload["notes"])
    ck = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-00000006.pt", weights_only=True)
    lrs = [r["lr"] for r in ck["extra"]["history"]]
    assert lrs[2] < 0.01 < lrs[1]  # the schedule went on at the new base lr


def test_corrupt_or_foreign_checkpoints(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(BASE + ["--steps", "6", "--stop-at", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    os.truncate(out / "checkpoints" / "ckpt-00000004.pt", 100)  # the newest is cut: fall back to step 2
    assert main(["train", "--resume", "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    assert "warning" in cap.err and "ckpt-00000004.pt" in cap.err and "Traceback" not in cap.err
    assert json.loads(cap.out)["resumed"].startswith(f"resuming {out} at step 2")
    assert _steps(out / "train.jsonl") == list(range(6))
    for path in (out / "checkpoints").glob("ckpt-*.pt"):
        path.write_bytes(os.urandom(500))
    assert main(["train", "--resume", "--out", str(out)]) == 1
    err = _err(capsys)
    assert "ckpt-00000006.pt" in err and "cannot read checkpoint" in err
    # a digits checkpoint in a folder without its run.json, resumed as charlm: a one-line mismatch
    other = tmp_path / "other"
    assert main(BASE + ["--steps", "2", "--out", str(other)]) == 0
    (other / "run.json").unlink()
    assert main(["train", "--task", "charlm", "--steps", "4", "--resume", "--out", str(other)]) == 1
    assert "does not match this model" in _err(capsys)


def test_log_cut_back_to_the_checkpoint_on_resume(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(BASE + ["--steps", "6", "--stop-at", "4", "--out", str(out)]) == 0
    log = out / "train.jsonl"
    with log.open("a") as fh:  # what a killed process leaves: records past the checkpoint, a cut line
        fh.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + '{"step": 5, "lo')
    os.remove(out / "checkpoints" / "ckpt-00000004.pt")  # killed before checkpoint 4 was renamed
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert _steps(log) == list(range(6))  # one record per step, no duplicate, no cut line
    capsys.readouterr()
    assert main(["doctor", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 6


def test_readme_doctor_path_is_what_train_writes() -> None:
    text = README.read_text()
    m = re.search(r"descent train .*--out (\S+)", text)
    assert m, "README shows descent train --out"
    assert f"descent doctor {m.group(1)}/train.jsonl" in text


_KILL_ARGS = ["train", "--task", "linear", "--optimizer", "sgd", "--lr", "0.01", "--steps", "400",
              "--checkpoint-every", "5", "--eval-every", "0", "--quiet"]


@pytest.mark.slow
def test_kill_9_descent_train_then_resume_is_bit_identical(tmp_path) -> None:
    cmd = [sys.executable, "-m", "descent.cli.main"]
    subprocess.run(cmd + _KILL_ARGS + ["--out", str(tmp_path / "full")], check=True, timeout=300,
                   capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + _KILL_ARGS + ["--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((cut / "checkpoints").glob("ckpt-*.pt"))) >= 2:
                proc.kill()
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9, "the run ended before it could be killed"
    done = json.loads((cut / "run.json").read_text()).get("completed_steps")
    assert done is None  # it never finished
    subprocess.run(cmd + _KILL_ARGS + ["--out", str(cut), "--resume"], check=True, timeout=300,
                   capture_output=True)
    full = torch.load(tmp_path / "full" / "checkpoints" / "ckpt-00000400.pt", weights_only=True)
    resumed = torch.load(cut / "checkpoints" / "ckpt-00000400.pt", weights_only=True)
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    assert full["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    assert [r["loss"] for r in full["extra"]["history"]] == [r["loss"] for r in resumed["extra"]["history"]]
    assert _steps(cut / "train.jsonl") == list(range(400))


_BLOCK = textwrap.dedent("""
    import sys
    for name in ["matplotlib", "sklearn", "tqdm", "mnist1d", "scipy", "tensorboard", "pandas"]:
        sys.modules[name] = None  # import of any of them raises ImportError, as when not installed
    from descent.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_command_runs_without_optional_dependencies(tmp_path) -> None:
    script = tmp_path / "bare.py"
    script.write_text(_BLOCK)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": i, "loss": 2.0 / (i + 1)}) + "\n" for i in range(30)))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120)

    for argv, code in ((["--help"], 0), (["tasks"], 0), (["doctor", str(log)], 0)):
        res = run(*argv)
        assert res.returncode == code and "Traceback" not in res.stderr, (argv, res.stderr)
    assert "30 steps" in run("doctor", str(log)).stdout
    res = run("train", "--task", "digits-mlp", "--out", str(tmp_path / "a"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "scikit-learn" in res.stderr and "descent[data]" in res.stderr and len(res.stderr.splitlines()) == 1
    res = run("train", "--task", "rosenbrock", "--steps", "3", "--out", str(tmp_path / "b"))
    assert res.returncode == 0 and "descent[plot]" in res.stdout, res.stderr
    code = "import sys; sys.modules['sklearn'] = None\ntry:\n import descent.sklearn\nexcept ImportError as e: print(e)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "descent[sklearn]" in res.stdout
