"""Low-bit states under FSDP2 (descent.distributed._lowbit), on CPU/gloo: an 8-bit AdamW state saved
from whole tensors loads into 2 and 4 FSDP2 shards and back through torch.distributed.checkpoint, and
fresh FSDP2 training with low-bit states equals one process, bit for bit (quantized parameters).

The ranks run tests/lowbit_distributed_worker.py (one subprocess per rank, every rank killed
at a timeout, as tests/test_distributed.py launches its worker).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")
pytest.importorskip("numba")

WORKER = Path(__file__).with_name("lowbit_distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from gloo_ranks import run_ranks  # noqa: E402


def launch(world: int, scenario: str, ckpt: str, name: str = "", timeout: float = 180.0) -> dict[int, dict]:
    """Run the worker on ``world`` ranks; ranks still running at ``timeout`` are killed."""
    results = run_ranks(WORKER, world, lambda out_dir: [scenario, ckpt, out_dir, name], timeout,
                        "descent-lowbit-dist-")
    for res in results.values():
        assert "fatal" not in res, res["trace"]
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


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_whole_checkpoint_loads_into_shards_and_back(whole: str, world: int) -> None:
    for rank, res in launch(world, "shards", whole).items():
        _exact(res, f"whole -> {world} shards, rank {rank}")
    _exact(launch(1, "back", whole, f"shards{world}")[0], f"{world} shards -> whole")


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_fresh_fsdp2_training_equals_one_process(world: int, tmp_path) -> None:
    """8-bit AdamW/Adam/Lion/SGD-momentum (lazy state), 4-bit AdamW and SGD (lazy, with a step counter) and
    8-bit AdamW on bf16 weights with Kahan summation, shards off the blocks; ZeRO-1."""
    for rank, res in launch(world, "fresh", str(tmp_path)).items():
        for case in ("adamw8", "adamw4", "adam8", "lion8", "sgd8", "sgd4", "bf16kahan"):
            assert res[case]["quantized"] >= 2, (case, res[case])
            _exact(res[case], f"{case} on {world} shards, rank {rank}")
        assert res["zero"] == 0.0, f"ZeroRedundancyOptimizer(AdamW, state_bits=8): max diff {res['zero']}"
        assert "(60, 75)" in res["odd4"] and "4-bit" in res["odd4"], res["odd4"]


def test_fsdp2_shards_on_block_edges_take_the_triton_kernels(tmp_path, monkeypatch) -> None:
    """bf16 weights on 2 FSDP2 ranks under Triton's interpreter: each rank steps its shards (whole global
    blocks) with the Triton low-bit kernels (8- and 4-bit AdamW, lazy 8-bit SGD, 4-bit Lion with its step
    counter), equal to one process bit for bit."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for rank, res in launch(2, "triton", str(tmp_path), timeout=300.0).items():
        for case in ("adamw8", "adamw4", "sgd8", "lion4"):
            assert res[case]["quantized"] >= 2 and res[case]["triton"] >= 6, (case, res[case])  # 2 weights, 3 steps
            _exact(res[case], f"{case} (Triton) on 2 shards, rank {rank}")


def test_flat_codes_of_earlier_checkpoints_load_param_shaped() -> None:
    """Codes saved flat (before they took the parameter's shape) load, and step as the new format does."""
    import torch

    import descent

    torch.manual_seed(0)
    w = torch.randn(64, 80)
    grads = [torch.randn(64, 80) for _ in range(3)]
    runs = []
    for flat in (False, True):
        p = w.clone().requires_grad_()
        opt = descent.AdamW([p], lr=1e-2, state_bits=8)
        p.grad = grads[0]
        opt.step()
        sd = opt.state_dict()
        if flat:
            sd["state"][0] = {k: v.reshape(-1) if k in ("exp_avg", "exp_avg_sq") else v for k, v in sd["state"][0].items()}
        opt = descent.AdamW([p], lr=1e-2, state_bits=8)
        opt.load_state_dict(sd)
        assert opt.state[p]["exp_avg"].shape == (64, 80)
        for g in grads[1:]:
            p.grad = g
            opt.step()
        runs.append((p.detach().clone(), opt.state[p]["exp_avg"].clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
