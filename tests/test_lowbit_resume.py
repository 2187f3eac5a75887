"""Exact resume of low-bit optimizer states in a new process.

AdamW with ``state_bits=8`` and ``4`` (and ``CPUOffloadOptimizer`` stepping an 8-bit AdamW)
train 3 steps here and save with ``descent.checkpoint.save``; a fresh Python process
loads the checkpoint with ``descent.checkpoint.load`` and trains 3 more steps; its
parameters and optimizer state must equal, bit for bit, an uninterrupted 6-step run in
this process. The data of a step is a function of the step, so nothing else carries over.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import descent

pytest.importorskip("numba")

CUT, STOP = 3, 6
KINDS = ("adamw8", "adamw4", "offload-adamw8")


def build(kind: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Tanh(), torch.nn.Linear(96, 10))  # 6144: quantized
    if kind == "offload-adamw8":
        return model, descent.CPUOffloadOptimizer(model.parameters(), "adamw", lr=1e-2, weight_decay=0.1,
                                                  state_bits=8, offload_gradients=True)
    return model, descent.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, state_bits=int(kind[-1]))


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def result(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {"params": [p.detach().clone() for p in model.parameters()], "state": opt.state_dict()["state"]}


def resume(directory: str) -> None:
    """Run in the new process: load each kind's checkpoint, finish the run, save the result."""
    for kind in KINDS:
        model, opt = build(kind)
        ck = descent.checkpoint.load(Path(directory, kind), model=model, optimizer=opt)
        assert ck.step == CUT, ck.step
        train(model, opt, CUT, STOP)
        torch.save(result(model, opt), Path(directory, f"{kind}-resumed.pt"))


def test_lowbit_state_resumes_bit_exactly_in_a_new_process(tmp_path: Path) -> None:
    expected = {}
    for kind in KINDS:
        model, opt = build(kind)
        train(model, opt, 0, CUT)
        descent.checkpoint.save(tmp_path / kind, step=CUT, model=model, optimizer=opt)
        train(model, opt, CUT, STOP)
        expected[kind] = result(model, opt)
    # the same intra-op thread count as this process: a matmul's sums may be split differently
    # with another count (other tests in this worker may have changed it), so the gradients would differ
    code = (f"import sys, torch; torch.set_num_threads({torch.get_num_threads()}); "
            f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_lowbit_resume as t; t.resume({str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in KINDS:
        got = torch.load(tmp_path / f"{kind}-resumed.pt", weights_only=True)
        want = expected[kind]
        assert all(torch.equal(a, b) for a, b in zip(got["params"], want["params"])), kind
        assert got["state"].keys() == want["state"].keys()
        codes = 0
        for i, state in want["state"].items():
            assert got["state"][i].keys() == state.keys(), (kind, i)
            for key, value in state.items():
                assert got["state"][i][key].dtype == value.dtype, (kind, i, key)
                assert torch.equal(got["state"][i][key], value), (kind, i, key)
                codes += value.dtype == torch.uint8
        assert codes >= 2, f"{kind}: no quantized state was compared"
