"""A low-bit (8-bit AdamW) state saved from whole tensors loads into 2 and 4 FSDP2 shards and back,
through torch.distributed.checkpoint on CPU/gloo, bit for bit against one uninterrupted process.

The ranks run tests/lowbit_distributed_worker.py (one subprocess per rank, every rank killed
at a timeout, as tests/test_distributed.py launches its worker).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")
pytest.importorskip("numba")

WORKER = Path(__file__).with_name("lowbit_distributed_worker.py")


def launch(world: int, scenario: str, ckpt: str, name: str = "", timeout: float = 180.0) -> dict[int, dict]:
    """Run the worker on ``world`` ranks; ranks still running at ``timeout`` are killed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out_dir = tempfile.mkdtemp(prefix="descent-lowbit-dist-")
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, ckpt, out_dir, name], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    results = {}
    for rank, p in enumerate(procs):
        p.wait()
        path = Path(out_dir, f"rank{rank}.json")
        log = p.stdout.read().decode(errors="replace")[-3000:] if p.stdout else ""
        if not path.exists():
            pytest.fail(f"rank {rank} of {world} wrote no result (rc={p.returncode}):\n{log}")
        results[rank] = json.loads(path.read_text())
        assert "fatal" not in results[rank], results[rank]["trace"]
    return results


def _exact(entry: dict, what: str) -> None:
    assert "error" not in entry, entry.get("trace")
    assert entry["diff"] == 0.0, f"{what}: max |params - one process| = {entry['diff']}"
    assert entry["state"] and all(entry["state"].values()), f"{what}: state entries differ: {entry['state']}"


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> str:
    """2 steps of 8-bit AdamW on whole tensors, saved with torch.distributed.checkpoint."""
    ckpt = str(tmp_path_factory.mktemp("lowbit-dcp"))
    assert launch(1, "whole", ckpt)[0]["quantized"] >= 4  # exp_avg and exp_avg_sq of both large weights
    return ckpt


#: Why this fails today (found by this test): under FSDP2 a low-bit state is made from the DTensor's
#: global numel but stepped on the local shard, so each rank keeps a plain tensor of the global size
#: whose first local-numel codes are its own shard, quantized in blocks counted from the shard's
#: start, not the global tensor's. torch.distributed.checkpoint saves such a plain tensor once (as if
#: replicated) and loads the whole tensor's state into every rank, which then reads the codes of
#: elements [0, n) for its own shard. Fresh FSDP2 training matches one process only when every
#: shard starts on a 256-element block (it does not here: 75 and 60 rows over 2 or 4 ranks).
GAP = ("low-bit state under FSDP2 is a per-rank buffer of the global size, blocked from the shard's "
       "start, not a DTensor on global blocks (lowbit/optim.py init_quantized + distributed elementwise_step)")


@pytest.mark.xfail(strict=True, reason=GAP)
@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_whole_checkpoint_loads_into_shards_and_back(whole: str, world: int) -> None:
    for rank, res in launch(world, "shards", whole).items():
        _exact(res, f"whole -> {world} shards, rank {rank}")
    _exact(launch(1, "back", whole, f"shards{world}")[0], f"{world} shards -> whole")
