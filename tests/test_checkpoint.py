"""descent.checkpoint: atomic save, keep-last-K, weights_only load, fallback on a corrupt file, exact resume."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import descent
from descent.checkpoint import CheckpointError, latest, list_checkpoints, load, save


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    opt = descent.AdamW(model.parameters(), lr=1e-2)
    sched = descent.attach(opt, descent.schedules.WarmupCosine(20, warmup=0.1))
    return model, opt, sched


def _step(model, opt, sched) -> float:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


def test_save_keeps_last_k_atomically(tmp_path) -> None:
    model, opt, sched = _setup()
    for step in range(1, 6):
        _step(model, opt, sched)
        path = save(tmp_path, step=step, model=model, optimizer=opt, scheduler=sched, keep=2)
        assert path == tmp_path / f"ckpt-{step:08d}.pt"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004.pt", "ckpt-00000005.pt"]  # no temp files
    assert latest(tmp_path).name == "ckpt-00000005.pt"
    with pytest.raises(ValueError, match="keep"):
        save(tmp_path, step=6, model=model, keep=0)
    with pytest.raises(ValueError, match="step"):
        save(tmp_path, step=-1, model=model)


def test_resume_in_process_is_bit_identical_with_rng(tmp_path) -> None:
    model, opt, sched = _setup()
    mon = descent.Monitor()
    for step in range(3):
        _step(model, opt, sched)
        mon.log(step, loss=1.0)
    random.seed(5)
    np.random.seed(5)
    save(tmp_path, step=3, model=model, optimizer=opt, scheduler=sched, monitor=mon, extra={"note": "x"})
    expect = [_step(model, opt, sched) for _ in range(4)] + [random.random(), float(np.random.rand())]
    expect_w = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _setup(seed=123)  # different init and RNG: everything must come from the file
    mon2 = descent.Monitor()
    ck = load(tmp_path, model=model2, optimizer=opt2, scheduler=sched2, monitor=mon2)
    assert (ck.step, ck.extra, len(mon2.history)) == (3, {"note": "x"}, 3)
    got = [_step(model2, opt2, sched2) for _ in range(4)] + [random.random(), float(np.random.rand())]
    assert got == expect
    assert all(torch.equal(a, b) for a, b in zip(expect_w, model2.parameters()))


def test_corrupt_latest_falls_back_with_warning(tmp_path) -> None:
    model, opt, sched = _setup()
    for step in (1, 2):
        _step(model, opt, sched)
        save(tmp_path, step=step, model=model, optimizer=opt)
    newest = tmp_path / "ckpt-00000002.pt"
    os.truncate(newest, 100)
    with pytest.warns(UserWarning, match="ckpt-00000002.pt.*using the previous checkpoint"):
        ck = load(tmp_path, model=model, optimizer=opt)
    assert ck.step == 1 and ck.skipped == [newest]
    (tmp_path / "ckpt-00000001.pt").write_bytes(os.urandom(3000))
    with pytest.raises(CheckpointError, match="no readable checkpoint.*ckpt-00000002.pt.*ckpt-00000001.pt"):
        load(tmp_path, model=model)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load(tmp_path / "empty", model=model)


def test_foreign_checkpoint_is_one_clear_error(tmp_path) -> None:
    model, opt, _ = _setup()
    save(tmp_path, step=1, model=model, optimizer=opt)
    other = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match=r"ckpt-00000001.pt does not match this model") as info:
        load(tmp_path, model=other)
    assert "\n" not in str(info.value)
    torch.save({"step": 1}, tmp_path / "ckpt-00000009.pt")  # not written by descent.checkpoint
    with pytest.warns(UserWarning, match="not a descent.checkpoint file"):
        assert load(tmp_path, model=model).step == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_is_weights_only(tmp_path) -> None:
    torch.save({"format": 1, "step": 1, "extra": {"x": _Evil()}}, tmp_path / "ckpt-00000001.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load(tmp_path)


_LOOP = textwrap.dedent("""
    import random, sys, time
    import numpy as np, torch, descent
    out, steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    torch.manual_seed(0); random.seed(0); np.random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    opt = descent.AdamW(model.parameters(), lr=1e-2)
    sched = descent.attach(opt, descent.schedules.WarmupCosine(steps, warmup=0.1))
    start = descent.checkpoint.load(out, model=model, optimizer=opt, scheduler=sched).step if resume else 0
    for step in range(start, steps):
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()   # all three generators used
        model(x).pow(2).mean().backward(); opt.step(); sched.step(); opt.zero_grad()
        descent.checkpoint.save(out, step=step + 1, model=model, optimizer=opt, scheduler=sched, keep=2)
        print(step + 1, flush=True)
        time.sleep(0.02)
    torch.save(model.state_dict(), out + "/final.pt")
""")


def _run(script: Path, out: Path, steps: int, resume: bool, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), str(out), str(steps), "1" if resume else "0"],
                          capture_output=True, text=True, timeout=timeout, check=True)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_bit_identical(tmp_path) -> None:
    script = tmp_path / "loop.py"
    script.write_text(_LOOP)
    steps = 30
    _run(script, tmp_path / "full", steps, False)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(script), str(cut), str(steps), "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.strip() and int(line) >= 5:
                proc.kill()  # SIGKILL: no chance to clean up
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9
    killed_at = load(cut, rng=False).step
    assert 5 <= killed_at < steps and not (cut / "final.pt").exists()
    _run(script, cut, steps, True)
    full = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    resumed = torch.load(cut / "final.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_scaler_and_monitor_round_trip(tmp_path) -> None:
    model, opt, _ = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale tensor exists from the first scale() on
    scaler.update(new_scale=256.0)
    mon = descent.Monitor()
    for step in range(3):
        mon.log(step, loss=1.0 / (step + 1))
    save(tmp_path, step=3, model=model, optimizer=opt, scaler=scaler, monitor=mon, rng=False)
    scaler2, mon2 = torch.amp.GradScaler("cpu"), descent.Monitor()
    load(tmp_path, scaler=scaler2, monitor=mon2)
    assert scaler2.get_scale() == 256.0
    rec = mon2.log(3, loss=0.25)  # the loss average continues where it was
    assert rec["loss_ema"] == mon.log(3, loss=0.25)["loss_ema"] and len(mon2.history) == 4
    with pytest.raises(CheckpointError, match="no scheduler state"):
        load(tmp_path, scheduler=descent.attach(opt, descent.schedules.WarmupCosine(5)))
