"""Every Triton kernel of descent compiles for an H100 (sm_90) on this CPU-only machine.

The interpreter tests (``tests/test_triton_*.py``) check the kernels' arithmetic on CPU tensors, but the
interpreter skips Triton's type checks and code generation, so a kernel could pass them and still fail
its first compile on a GPU. Here every launch the launchers make (recorded under the interpreter by
``tests/triton_aot.py capture``) is compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``
to PTX and a cubin (Triton's bundled ``ptxas``), in a process without the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HELPER = Path(__file__).with_name("triton_aot.py")


def _run(args: list[str], interpret: bool, tmp: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env.setdefault("TRITON_CACHE_DIR", str(tmp / "triton-cache"))
    out = subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


def test_every_triton_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    pytest.importorskip("triton.backends.nvidia")
    specs = tmp_path / "specs.json"
    captured = _run(["capture", str(specs)], True, tmp_path)
    count = int(captured.split("captured ")[-1].split()[0])
    assert count >= 20, captured  # Lion, SophiaG, RMSprop x2, LAMB x3, Adafactor x5, low-bit x12
    compiled = _run(["compile", str(specs), "90"], False, tmp_path)
    assert f"compiled {count} of {count}" in compiled, compiled
