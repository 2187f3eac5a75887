"""Start N gloo ranks of a worker script, bounded in time (a helper of the distributed tests, not collected).

Each rank is one subprocess with RANK/WORLD_SIZE/MASTER_* set and one thread (OMP and Numba),
and writes ``OUT_DIR/rank{r}.json``; every rank still running at the deadline is killed, so a
test fails with the rank's log instead of hanging.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def run_ranks(worker: Path, world: int, argv: Callable[[str], list[str]], timeout: float,
              prefix: str = "descent-ranks-") -> dict[int, dict]:
    """Run ``worker`` on ``world`` ranks with arguments ``argv(out_dir)``; return each rank's JSON result."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out_dir = tempfile.mkdtemp(prefix=prefix)
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(worker), *argv(out_dir)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    hung = [r for r, p in enumerate(procs) if p.poll() is None]
    for r in hung:
        procs[r].kill()
    results = {}
    for rank, p in enumerate(procs):
        p.wait()
        path = Path(out_dir, f"rank{rank}.json")
        log = p.stdout.read().decode(errors="replace")[-3000:] if p.stdout else ""
        if rank in hung or not path.exists():
            pytest.fail(f"rank {rank} of {world} {'hung' if rank in hung else 'wrote no result'} "
                        f"(rc={p.returncode}):\n{log}")
        results[rank] = json.loads(path.read_text())
    return results
