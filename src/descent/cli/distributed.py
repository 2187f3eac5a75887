"""``descent train --nproc N`` and ``torchrun --nproc_per_node N -m descent train``: FSDP2 data parallel.

``--nproc N`` starts N local processes of the same command (as torchrun does, with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set); a process that finds WORLD_SIZE > 1 in its
environment runs :func:`descent.distributed.train.train`. Rank 0 alone prints and writes
the log; checkpoints are ``torch.distributed.checkpoint`` folders.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from ._args import UsageError

__all__ = ["wants_distributed", "spawn", "run"]


def wants_distributed(args: argparse.Namespace) -> bool:
    """Whether this ``train`` runs data-parallel: ``--nproc`` > 1 or started by torchrun (WORLD_SIZE > 1)."""
    return (getattr(args, "nproc", 1) or 1) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def spawn(nproc: int, argv: list[str]) -> int:
    """Run ``python -m descent <argv>`` in ``nproc`` local processes; the worst exit code wins.

    If one process fails the others are stopped, so no rank waits forever on a dead peer.
    """
    port = str(_free_port())
    cmd = [sys.executable, "-m", "descent", *_without_nproc(argv)]
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes: dict[int, int] = {}
        while len(codes) < nproc:
            for rank, p in enumerate(procs):
                if rank not in codes and p.poll() is not None:
                    codes[rank] = p.returncode
                    if p.returncode != 0:  # a dead rank: stop the rest instead of letting them hang
                        for q in procs:
                            if q.poll() is None:
                                q.send_signal(signal.SIGTERM)
            if len(codes) < nproc:
                try:
                    procs[min(set(range(nproc)) - set(codes))].wait(0.2)
                except subprocess.TimeoutExpired:
                    pass
        return max(codes.values(), key=abs)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.kill()
        raise


def run(args: argparse.Namespace) -> int:
    """The ``train`` command for one rank of a data-parallel run (rank 0 prints)."""
    from descent.distributed.train import UNSUPPORTED, train

    for flag in ("resume", "recipe"):
        if getattr(args, flag, None):
            raise UsageError(f"--{flag} is not supported with --nproc/torchrun yet (data-parallel runs start fresh)")
    if args.lr == "auto":
        raise UsageError("--lr auto is not supported with --nproc/torchrun: pass a number")
    optimizer = args.optimizer or "adamw"
    if optimizer.lower() in UNSUPPORTED:
        raise UsageError(f"--optimizer {optimizer} with --nproc/torchrun: {UNSUPPORTED[optimizer.lower()]}")
    rank = int(os.environ.get("RANK", "0"))
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)

    def show(rec: dict[str, Any]) -> None:
        if not quiet and (rec["step"] % 50 == 0 or rec["step"] + 1 == steps):
            print(f"step {rec['step']:>5}  loss {rec['loss']:.4f}", flush=True)

    steps = args.steps or 300
    result = train(args.task or "digits-mlp", optimizer, args.lr, steps, seed=args.seed or 0, clip=args.clip,
                   out=args.out, checkpoint_every=getattr(args, "checkpoint_every", 0) or 0, on_record=show)
    if rank == 0:
        if getattr(args, "json", False):
            import json

            print(json.dumps(result))
        else:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["final"].items())
            print(f"{args.task or 'digits-mlp'} with {optimizer} on {result['world_size']} processes (FSDP2): "
                  f"loss {result['loss']:.4f}; {metrics}; {result['seconds']:.1f} s; checkpoint {result['checkpoint']}")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # free the group's gloo threads now, not in the interpreter's shutdown (see distributed._comm)
    return 0
