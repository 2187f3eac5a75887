"""Run a test file's Triton kernel tests under the interpreter (a helper of the kernel tests, not collected).

A file marks its kernel tests ``@interp`` and calls :func:`run_interpreted` from one ordinary
test: that test starts ``pytest FILE`` in a child process with ``TRITON_INTERPRET=1`` (set
before triton is imported), keeping this run's ``-m`` selection and leaving ``gpu`` tests out.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(not INTERPRETED, reason="run by test_interpreter_suite (TRITON_INTERPRET=1 subprocess)")


def run_interpreted(path: str, request: pytest.FixtureRequest) -> None:
    """Run ``path``'s tests in a TRITON_INTERPRET=1 child; fail with its output if any fails."""
    if INTERPRETED:
        pytest.skip("this is the child")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    marks = request.config.getoption("markexpr")
    marks = f"({marks}) and not gpu" if marks else "not gpu"
    out = subprocess.run([sys.executable, "-m", "pytest", path, "-q", "-x", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "-m", marks], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout, out.stdout[-2000:]
