"""The GPU benchmark scripts run end to end on CPU tensors (gpu_step.py with Triton's interpreter), so a
change that breaks them shows here, before device time is spent on them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH / "gpu_step.py"


def test_gpu_step_cpu_smoke_run_has_every_row() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--width", "16", "--layers", "1", "--vocab", "32",
                          "--iters", "1", "--warmup", "0", "--no-compile", "--dtype", "bf16"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for name in ("Lion", "RMSprop", "SophiaG", "LAMB", "Adafactor", "AdamW8bit", "AdamW4bit"):  # descent's Triton launchers, as the script calls them
        assert re.search(rf"^{name}\s+descent triton\s+\d+\.\d+", text, re.M), (name, text)
    assert re.search(r"^AdamW\s+torch AdamW fused\s+\d+\.\d+", text, re.M), text
    assert "failed" not in text, text
    assert re.search(r"^Muon NS\s+standard", text, re.M) and re.search(r"^Muon NS\s+gram", text, re.M), text
    assert "capture    skipped" in text


def test_offload_step_cpu_smoke_run_has_every_row() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "offload_step.py"), "--device", "cpu", "--width", "64", "--depth",
                          "2", "--batch", "32", "--iters", "1", "--warmup", "1", "--dtype", "bf16"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for label in ("AdamW on the device", "CPUOffloadOptimizer(AdamW), grads at step",
                  "CPUOffloadOptimizer(AdamW), offload_gradients=True"):
        assert re.search(rf"^{re.escape(label)}\s+\d+\.\d+", out.stdout, re.M), (label, out.stdout)
