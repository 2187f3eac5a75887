"""Data-parallel training of a built-in task with FSDP2: what ``torchrun -m descent train`` runs.

Every rank builds the same seeded model, ``fully_shard`` splits its parameters, and each
step every rank takes its slice of the global batch (``tensor_split`` by rank), so the
averaged gradient is the one of the global batch. Rank 0 alone writes the log and the run
configuration; checkpoints are ``torch.distributed.checkpoint`` folders
(``checkpoints/step-<n>``) that every rank writes its shards into and that load on any
number of ranks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_from_env", "shard_model", "train", "UNSUPPORTED"]

log = logging.getLogger("descent.distributed")

#: Optimizers the data-parallel loop refuses, and why (checked on every rank before any collective).
UNSUPPORTED = {
    "kfac": "K-FAC's factor statistics come from per-rank activations and are not averaged across ranks yet",
    "lbfgs": "L-BFGS needs a closure over the whole batch and line-search evaluations on every rank",
}


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    Returns ``(rank, world_size)``; an already initialised group is used as it is.
    """
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("Invalid environment: RANK and WORLD_SIZE are not set "
                               "(start with torchrun --nproc_per_node N -m descent train ..., or descent train --nproc N)")
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def shard_model(model: nn.Module) -> nn.Module:
    """``fully_shard`` every direct child that holds parameters, then the root (FSDP2's usual wrapping)."""
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    return fully_shard(model)


def _global_loss(loss: torch.Tensor, n_local: int, n_global: int) -> float:
    total = torch.tensor([float(loss.detach()) * n_local], dtype=torch.float64, device=loss.device)
    dist.all_reduce(total)
    return float(total) / max(n_global, 1)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def train(task_name: str = "digits-mlp", optimizer: str = "adamw", lr: float | None = None, steps: int = 300, *,
          seed: int = 0, clip: float | None = None, out: str | Path | None = None, checkpoint_every: int = 0,
          on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``task_name`` data-parallel over the current process group with FSDP2.

    Args:
        task_name: a built-in task (``descent.tasks.task_names()``).
        optimizer: a name of ``descent.tasks.training.OPTIMIZERS``; lr: its lr (default: the task's).
        steps: optimizer steps; each uses the task's whole batch, split over the ranks.
        seed: model and data seed (the same on every rank).
        clip: global grad-norm clipping (reduced over the ranks).
        out: run folder (rank 0 writes ``run.json`` and ``train.jsonl``; every rank its checkpoint shards).
        checkpoint_every: steps between checkpoints (0: at the end only; no checkpoint without ``out``).
        on_record: called on rank 0 with each step's record (the CLI prints progress from it).

    Returns:
        ``{"final": {...metrics}, "loss": last loss, "world_size", "seconds", "checkpoint"}`` on every rank.

    Example (2 processes)::

        torchrun --nproc_per_node 2 -m descent train --task digits-mlp --optimizer muon --steps 100 --out runs/dp
    """
    import descent
    from descent.tasks import get_task
    from descent.tasks.training import make_optimizer

    key = optimizer.strip().lower()
    if key in UNSUPPORTED:
        raise ValueError(f"Invalid optimizer for data-parallel training: {optimizer!r} ({UNSUPPORTED[key]})")
    rank, world = init_from_env()
    task = get_task(task_name, seed=seed)
    torch.manual_seed(seed)
    model = shard_model(task.make_model(seed))
    opt = make_optimizer(key, model, task.lr_for(key) if lr is None else lr)
    folder = Path(out) if out is not None else None
    if folder is not None and rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "run.json", dict(task=task_name, optimizer=key, lr=lr, steps=steps, seed=seed, clip=clip,
                                              world_size=world, wrapper="fsdp2"))
    logf = open(folder / "train.jsonl", "a", encoding="utf-8") if folder is not None and rank == 0 else None
    start, loss_value, checkpoint = time.perf_counter(), float("nan"), None
    try:
        for step in range(steps):
            x, y = task.train.at(step)
            xl, yl = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, (xl, yl))
            loss.backward()
            rec: dict[str, Any] = {"step": step, "lr": float(opt.param_groups[0]["lr"])}
            if clip is not None:
                rec["grad_norm"] = float(descent.clip_grad_norm_(model.parameters(), clip))
            opt.step()
            loss_value = _global_loss(loss, len(xl), len(x))
            rec["loss"] = loss_value
            if rank == 0:
                if logf is not None:
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                if on_record is not None:
                    on_record(rec)
            last = step + 1 == steps
            if folder is not None and (last or (checkpoint_every and (step + 1) % checkpoint_every == 0)):
                checkpoint = save_checkpoint(model, opt, folder / "checkpoints" / f"step-{step + 1}")
    finally:
        if logf is not None:
            logf.close()
    model.eval()
    with torch.no_grad():
        final = task.evaluate(model)
    return dict(final=final, loss=loss_value, world_size=world, seconds=time.perf_counter() - start,
                checkpoint=str(checkpoint) if checkpoint else None)


def save_checkpoint(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> Path:
    """Model and optimizer state through ``torch.distributed.checkpoint`` (every rank writes its shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))
    return path


def load_checkpoint(model: nn.Module, opt: torch.optim.Optimizer, path: str | Path) -> None:
    """Load a :func:`save_checkpoint` folder written by any number of ranks into this group's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
