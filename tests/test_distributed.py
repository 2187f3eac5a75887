"""descent under torch.distributed on CPU/gloo: 1, 2 and 4 processes against one process.

Each process group is started once (tests/test_distributed_worker.py, one subprocess per
rank, bounded by a timeout that kills every rank) and runs many checks; the tests here
read what each rank reported. The gradients are set from one seeded full gradient
(``shard_like``), so a wrapped step and the one-process step see the same numbers:
elementwise optimizers must match bit for bit (tolerance 0), except where torch's fused
CPU kernels round a vector tail differently (1 ulp, stated below); whole-tensor
statistics (LAMB, Adafactor) to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

WORKER = Path(__file__).with_name("test_distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from gloo_ranks import run_ranks  # noqa: E402
from test_distributed_worker import CHECKPOINTED, FSDP_GAPS, OPTIMIZERS  # noqa: E402

#: torch's fused CPU kernels (SGD with momentum, Adam, AdamW) run a tensor's last
#: elements outside the vector loop; on a shard of another length such an element can
#: round differently by one float32 ulp (measured: 6e-8 on values below 1).
TORCH_FUSED_ULP = 1.2e-7
_TORCH_FUSED = {"sgd", "momentum", "adam", "adamw"}
#: Resharded runs: 2 steps on 2 ranks, then 2 on 1 or 4 ranks, against 4 one-process steps.
RESHARD_TOL = {"adamw": TORCH_FUSED_ULP, "adafactor": 1e-6, "muon": 0.0, "shampoo": 0.0, "soap": 0.0}


def launch(world: int, scenarios: str, arg: str = "", timeout: float = 240.0) -> dict[int, dict]:
    """Run the worker on ``world`` ranks; every rank is killed at ``timeout`` seconds (never a hang)."""
    return run_ranks(WORKER, world, lambda out_dir: [scenarios, out_dir, arg], timeout, "descent-dist-")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict[int, dict], str]:
    ckpt = str(tmp_path_factory.mktemp("dcp"))
    return launch(2, "fsdp,ddp,zero,errors,save,train,owner_state,kfac_ddp,kfac_more,adafactor_nd,overlap,"
                  "zero_muon", ckpt), ckpt


def _check(entry: dict, label: str, tol: float) -> None:
    assert "error" not in entry, entry.get("trace", entry.get("error"))
    assert entry["diff"] <= tol, f"{label}: max |distributed - one process| = {entry['diff']} > {tol}"


def _tolerance(wrapper: str, name: str, tol: float) -> float:
    return max(tol, TORCH_FUSED_ULP) if wrapper == "fsdp" and name in _TORCH_FUSED else tol


@pytest.mark.parametrize("wrapper", ["fsdp", "ddp", "zero"])
@pytest.mark.parametrize("label,name,tol", [(o[0], o[1], o[3]) for o in OPTIMIZERS], ids=[o[0] for o in OPTIMIZERS])
def test_two_ranks_match_one_process(two_ranks, wrapper: str, label: str, name: str, tol: float) -> None:
    results, _ = two_ranks
    if wrapper == "fsdp" and label in FSDP_GAPS:
        pytest.skip(f"{label} under FSDP2: {FSDP_GAPS[label]}")
    for rank, res in results.items():
        assert "fatal" not in res[wrapper], res[wrapper]
        _check(res[wrapper][label], f"{wrapper} rank {rank} {label}", _tolerance(wrapper, name, tol))


def test_every_registered_optimizer_is_covered() -> None:
    import descent

    covered = {o[1] for o in OPTIMIZERS} | {"kfac", "lbfgs"}  # K-FAC, L-BFGS: refused under FSDP2 (see README)
    assert set(descent.list_optimizers()) <= covered, set(descent.list_optimizers()) - covered


def test_errors_are_raised_on_every_rank(two_ranks) -> None:
    results, _ = two_ranks
    errs = [res["errors"] for res in results.values()]
    assert all("fatal" not in e for e in errs), errs
    assert all(e["muon_vector"].startswith("ValueError: Invalid parameter for Muon") for e in errs)
    assert len({e["muon_vector"] for e in errs}) == 1  # the same message everywhere
    assert all(e["nan_one_rank_skipped"] and e["skipped_steps"] == 1 for e in errs)  # a NaN on one rank skips all
    assert all(e["clip_norm_error"] < 1e-6 and e["clip_grads_error"] < 1e-6 for e in errs), errs
    outcomes = {res["zero_muon"]["zero_muon"] for res in results.values()}  # ZeRO + Muon on plain params: works, or fails the same everywhere
    assert outcomes == {"ok"} or (len(outcomes) == 1 and "ValueError" in outcomes.pop()), outcomes


def test_overlapped_collectives_give_the_same_bits(two_ranks) -> None:
    results, _ = two_ranks
    for rank, res in results.items():
        for label, entry in res["overlap"].items():
            _check(entry, f"overlap rank {rank} {label}", 0.0)  # waves + async against one wave, blocking
            on, off = entry["calls"]
            assert on > off, (label, entry)  # the bucket really went in several waves


def _check_adafactor_nd(res: dict, label: str) -> None:
    entry = res["adafactor_nd"]
    assert "fatal" not in entry, entry
    for key in ("default", "b1-wd-max"):
        _check(entry[key], f"{label} Adafactor {key} on >2-D tensors", 1e-6)
    assert entry["numba_tensors_per_step"] == 4, entry  # all but the matrix split by columns (eager ops)


def test_adafactor_beyond_2d_runs_the_numba_passes(two_ranks) -> None:
    results, _ = two_ranks
    for rank, res in results.items():
        _check_adafactor_nd(res, f"rank {rank}")


def test_preconditioners_live_on_one_owner_rank(two_ranks) -> None:
    results, _ = two_ranks
    for name in ("shampoo", "soap"):
        held = [res["owner_state"][name]["here"] for res in results.values()]
        total = results[0]["owner_state"][name]["one_process"]
        assert sum(total) > 0
        assert [sum(c) for c in zip(*held)] == total, (name, held, total)  # each matrix's once, on its owner
        assert all(0 < sum(h) < sum(total) for h in held), (name, held)  # both ranks own some (balanced by cost)
        assert all(res["owner_state"][name]["diff"] == 0.0 for res in results.values()), name  # square matrix too


def test_soap_per_dimension_bases_live_on_owner_ranks(two_ranks) -> None:
    """SOAP on conv kernels (per dimension, merge_dims, precondition_1d vectors): bit for bit under FSDP2,
    every basis (gg_k/q_k) on exactly one rank."""
    results, _ = two_ranks
    for label in ("per_dim", "merge_dims", "precondition_1d"):
        runs = [res["owner_state"]["soap_nd"][label] for res in results.values()]
        assert all(r["diff"] == 0.0 for r in runs), (label, runs)
        one = runs[0]["one_process"]
        assert sum(map(len, one)) > 0 and any("gg_3" in keys for keys in one) == (label != "merge_dims")
        assert [sorted(a + b) for a, b in zip(runs[0]["here"], runs[1]["here"])] == one, (label, runs)
    assert ["gg_0", "q_0"] in results[0]["owner_state"]["soap_nd"]["precondition_1d"]["one_process"]


def test_kfac_under_ddp_averages_its_factors(two_ranks) -> None:
    results, _ = two_ranks
    for rank, res in results.items():
        k = res["kfac_ddp"]
        assert "fatal" not in k, k
        assert k["group_found"]  # the DDP model's process group, found without an argument
        assert k["averaged"] <= 1e-5, (rank, k)  # one process on the global batch, to float rounding
        assert k["not_averaged"] > 1e-3, (rank, k)  # per-rank factors alone: a different step
        assert k["mismatch"].startswith("RuntimeError: KFAC: the ranks collected different"), k  # every rank, no hang


def test_kfac_under_ddp_with_fisher_backward_and_copies(two_ranks) -> None:
    results, _ = two_ranks
    for rank, res in results.items():
        k = res["kfac_more"]
        assert "fatal" not in k, k
        assert k["fisher_collected"]  # G from the sampled-target pass, not the loss's gradients
        assert k["fisher"] <= 1e-5, (rank, k)  # averaged true-Fisher factors: one process on the global batch
        assert k["fisher_not_averaged"] > 1e-3, (rank, k)
        # a deepcopy or pickle of an optimizer holding a process group: no group (it collects no factors), steps
        assert k["deepcopy"] == "ok" and k["pickle"] == "ok", k


def test_data_parallel_training_logs_once_and_checkpoints(two_ranks) -> None:
    results, _ = two_ranks
    train = results[0]["train"]
    assert "fatal" not in train, train
    assert train["steps_logged"] == [0, 1, 2, 3]  # one record per step: only rank 0 writes
    assert train["checkpoints"] == ["step-2", "step-4"]
    assert train["loss"] == results[1]["train"]["loss"]  # the reduced loss, the same on every rank
    assert 0 < train["final"]["val_acc"] <= 1


def test_checkpoint_reshards_to_one_rank(two_ranks) -> None:
    results, ckpt = two_ranks
    assert all("fatal" not in res["save"] for res in results.values()), results
    loaded = launch(1, "load", ckpt)
    for name, _ in CHECKPOINTED:
        _check(loaded[0]["load"][name], f"2 -> 1 ranks {name}", RESHARD_TOL[name])


@pytest.mark.slow
def test_four_ranks(two_ranks) -> None:
    _, ckpt = two_ranks
    results = launch(4, "fsdp,load,adafactor_nd,overlap", ckpt, timeout=300)
    for rank, res in results.items():
        _check_adafactor_nd(res, f"4 ranks rank {rank}")
        for label, entry in res["overlap"].items():  # waves of one tensor: some ranks hold no row of it
            _check(entry, f"overlap 4 ranks rank {rank} {label}", 0.0)
        for label, name, _, tol in OPTIMIZERS:
            if label in FSDP_GAPS:
                continue
            _check(res["fsdp"][label], f"fsdp 4 ranks rank {rank} {label}", _tolerance("fsdp", name, tol))
        for name, _ in CHECKPOINTED:
            _check(res["load"][name], f"2 -> 4 ranks rank {rank} {name}", RESHARD_TOL[name])


def test_cli_refuses_what_data_parallel_runs_cannot_do() -> None:
    import argparse

    from descent.cli._args import UsageError
    from descent.cli.distributed import run, wants_distributed

    base = dict(task="digits-mlp", optimizer="adamw", lr=None, steps=3, seed=0, clip=None, out=None, resume=False,
                recipe=None, nproc=2, quiet=True, json=False, checkpoint_every=0)
    assert wants_distributed(argparse.Namespace(**base))
    assert not wants_distributed(argparse.Namespace(**{**base, "nproc": 1})) or os.environ.get("WORLD_SIZE")
    for change, word in (({"resume": True}, "--resume"), ({"optimizer": "kfac"}, "kfac"), ({"lr": "auto"}, "auto")):
        with pytest.raises(UsageError, match=word):  # before any process group is started
            run(argparse.Namespace(**{**base, **change}))


@pytest.mark.slow
def test_cli_nproc_trains_with_fsdp2(tmp_path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "descent", "train", "--nproc", "2", "--task", "digits-mlp",
                           "--optimizer", "muon", "--steps", "3", "--out", str(out), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on 2 processes (FSDP2)" in proc.stdout  # printed once, by rank 0
    assert proc.stdout.count("FSDP2") == 1
    assert len((out / "train.jsonl").read_text().splitlines()) == 3
    assert (out / "checkpoints" / "step-3").is_dir()
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
