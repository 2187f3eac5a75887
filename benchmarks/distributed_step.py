"""Step time and bytes communicated per optimizer step under FSDP2, for 1, 2 and 4 processes (CPU, gloo).

Usage:
    python benchmarks/distributed_step.py                       # 1, 2, 4 processes, every optimizer
    python benchmarks/distributed_step.py --nprocs 2 --only Muon AdamW --iters 3
    python benchmarks/distributed_step.py --width 64            # smoke run (a small GPT list)

The parameters are the GPT-shaped list of ``benchmarks/step_speed.py`` (196 tensors,
20.1M parameters at ``--width 320``), held by one module that ``fully_shard`` splits
over the processes (1 process: plain tensors, the one-process baseline). Gradients are
fixed random tensors, so only the optimizer step is timed: the median over ``--iters``
steps of the slowest rank; "CPU ms" the median CPU time of a step in the busiest process
(``time.process_time``: less sensitive than wall time to other jobs on a shared machine,
though it counts gloo's polling too). "sent/step" is what descent's own collectives sent, summed
over ranks (FSDP2's all-gather/reduce-scatter of the forward and backward are not part
of an optimizer step and are not counted; the all-gathers of a "gather" scheme are); "x
matrices" divides it by the bytes of the Muon matrices (float32). For Muon, Shampoo and
SOAP, "owner" (each matrix stepped by one rank) runs beside "gather" (every rank gathers
and steps every matrix); "NS share" is the
largest fraction of the Newton-Schulz cost that one rank carries (1/N is perfect) and
"NS ms" the Newton-Schulz time measured on the busiest rank (sharded runs only). "wait ms" is the
time the busiest rank spent blocked in descent's collectives per step
(``descent.distributed._comm.waited``); ``--overlap on`` (the default, as descent's)
runs them async in waves, ``--overlap off`` blocking in one wave (``DESCENT_OVERLAP=0``), ``--overlap both`` runs each optimizer both ways (an "overlap" column).
``--phases`` adds the CPU seconds per step of the busiest process in the phases of the Shampoo/SOAP
step: the optimizer's ``_update`` (eigh/QR, rotations), the all-to-all to the owners, the return of
the rows, and the all-gathers of the "gather" scheme (with ``--overlap off`` the all-to-alls are
blocking and counted in their phase; with overlap, their transfer runs beside the ``_update``).

Every process gets ``OMP_NUM_THREADS=1`` and ``NUMBA_NUM_THREADS=1``: on a 2-core
machine 4 processes oversubscribe it, so times for 4 processes measure contention too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

OPTIMIZERS = {
    "AdamW": dict(lr=1e-3, weight_decay=0.1),
    "SGD": dict(lr=1e-2, momentum=0.9),
    "Lion": dict(lr=1e-4),
    "LAMB": dict(lr=1e-3),
    "Adafactor": dict(),
    "SophiaG": dict(lr=1e-4),
    "Muon": dict(lr=0.02),
    "Muon (gather)": dict(lr=0.02),
    "MARS": dict(lr=1e-3),
    "Shampoo": dict(lr=1e-3),
    "Shampoo (gather)": dict(lr=1e-3),
    "SOAP": dict(lr=1e-3),
    "SOAP (gather)": dict(lr=1e-3),
}


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    import descent
    import descent.distributed as D
    from descent.distributed import _comm, _owner, _precond
    from descent.reporting.bench import gpt_shapes

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    shapes = gpt_shapes(width=args.width)
    gen = torch.Generator().manual_seed(0)
    holder = nn.Module()
    holder.ps = nn.ParameterList([nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes])
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        fully_shard(holder)
    params = list(holder.parameters())
    mats = [p for p in params[2:] if p.ndim == 2]
    matrix_bytes = sum(p.numel() * 4 for p in mats)
    rows = []
    for name, on in ((n, on) for n in args.only for on in {"on": [True], "off": [False], "both": [True, False]}[
            args.overlap]):
        _comm.overlap = on
        kwargs = OPTIMIZERS[name]
        if name.startswith("Muon"):
            rest = [p for p in params if not (p.ndim == 2 and any(p is m for m in mats))]
            opt = descent.Muon([dict(params=mats, use_muon=True), dict(params=rest, use_muon=False)], **kwargs)
            _owner._scheme = "gather" if "gather" in name else "owner"
        else:
            opt = getattr(descent, name.split()[0])(params, **kwargs)
            _precond._scheme = "gather" if "gather" in name else "owner"
        for p, g in zip(params, grads):
            p.grad = D.shard_like(g, p)
        opt.step()  # state, kernels compiled
        phases = _time_phases(opt) if args.phases else {}
        times, cpu = [], []
        D.reset_traffic()
        _owner.ns_seconds[0] = 0.0
        for _ in range(args.iters):
            if world > 1:
                dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            opt.step()
            elapsed = torch.tensor([time.perf_counter() - t0])
            cpu.append(time.process_time() - c0)
            if world > 1:
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            times.append(float(elapsed))
        sent = torch.tensor([float(D.traffic["reduce"] + D.traffic["exchange"] + D.traffic["gather"]) / args.iters])
        ns_ms = torch.tensor([1e3 * _owner.ns_seconds[0] / args.iters])
        wait_ms = torch.tensor([1e3 * _comm.waited[0] / args.iters])
        cpu_ms = torch.tensor([1e3 * statistics.median(cpu)])
        if world > 1:
            dist.all_reduce(cpu_ms, op=dist.ReduceOp.MAX)
            dist.all_reduce(sent)
            dist.all_reduce(ns_ms, op=dist.ReduceOp.MAX)
            dist.all_reduce(wait_ms, op=dist.ReduceOp.MAX)
        share = None
        if name.startswith("Muon"):
            costs = [_owner.ns_cost(p) for p in mats]
            load = [0.0] * world
            for c, o in zip(costs, D.assign_owners(costs, world)):
                load[o] += c
            share = (max(load) if "gather" not in name else sum(costs)) / sum(costs)
        rows.append(dict(optimizer=name, overlap=on, wait_ms=float(wait_ms), nprocs=world, ms=1e3 * statistics.median(times), cpu_ms=float(cpu_ms),
                         sent_mb=float(sent) / 1e6,
                         x_matrices=float(sent) / matrix_bytes, ns_share=share,
                         ns_ms=float(ns_ms) if name.startswith("Muon") and world > 1 else None))
        if phases:
            cpu_s = torch.tensor([phases[k] / args.iters for k in sorted(phases)])
            if world > 1:
                dist.all_reduce(cpu_s, op=dist.ReduceOp.MAX)
            rows[-1]["phases_cpu_s"] = dict(zip(sorted(phases), cpu_s.tolist()))
            _time_phases(None)
        del opt
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(dict(rows=rows, params=sum(p.numel() for p in params), tensors=len(params),
                           matrix_mb=matrix_bytes / 1e6), f)
    if world > 1:
        dist.destroy_process_group()


def _time_phases(opt) -> dict[str, float]:
    """Wrap the phases of the owner/gather step with CPU timers (``opt`` None: unwrap); the totals, filled as
    steps run, are returned (after the first, compiling step)."""
    from descent.distributed import _precond, _step

    saved = _time_phases.__dict__.setdefault("saved", {})
    for (mod, name), fn in saved.items():
        setattr(mod, name, fn)
    saved.clear()
    if opt is None:
        return {}
    totals: dict[str, float] = {}

    def timed(key, fn):
        def run(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                totals[key] = totals.get(key, 0.0) + time.process_time() - c0
        return run

    for mod, name, key in ((_precond, "_to_owners", "to owners"), (_precond, "_return_rows", "back"),
                           (_precond, "_write_rows", "back"), (_step, "_full", "all-gathers")):
        saved[(mod, name)] = getattr(mod, name)
        setattr(mod, name, timed(key, getattr(mod, name)))
    opt._update = timed("_update", opt._update)
    for key in ("to owners", "back", "all-gathers", "_update"):
        totals[key] = 0.0
    return totals


def _launch(n: int, args: argparse.Namespace) -> dict:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out = tempfile.mktemp(suffix=".json")
    cmd = [sys.executable, __file__, "--worker", "--out", out, "--width", str(args.width), "--iters", str(args.iters),
           "--overlap", args.overlap, *(["--phases"] if args.phases else []), "--only", *args.only]
    procs = []
    for r in range(n):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        procs.append(subprocess.Popen(cmd, env=env))
    deadline = time.monotonic() + args.timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
    if not os.path.exists(out):
        raise SystemExit(f"{n} processes: no result (timeout {args.timeout} s or a crash; see the output above)")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--only", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--width", type=int, default=320, help="model width (320: the 20.1M list)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process count")
    parser.add_argument("--overlap", choices=("on", "off", "both"), default="on",
                        help="collectives async in waves (on, the default, as descent), blocking in one wave (off), or both")
    parser.add_argument("--phases", action="store_true", help="CPU seconds per phase of the Shampoo/SOAP step")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    runs = [_launch(n, args) for n in args.nprocs]
    if args.json:
        print(json.dumps(runs, indent=1))
        return
    head = runs[0]
    print(f"{head['params'] / 1e6:.1f}M parameters in {head['tensors']} tensors; Muon matrices "
          f"{head['matrix_mb']:.1f} MB (float32); CPU/gloo, 1 thread per process")
    print(f"{'optimizer':16} {'overlap':>7} {'procs':>5} {'ms/step':>9} {'CPU ms':>7} {'wait ms':>7} {'sent/step MB':>13} "
          f"{'x matrices':>10} {'NS share':>9} {'NS ms, busiest rank':>20}")
    for run in runs:
        for r in run["rows"]:
            share = "" if r["ns_share"] is None else f"{r['ns_share']:.2f}"
            ns_ms = "" if r.get("ns_ms") is None else f"{r['ns_ms']:.0f}"
            print(f"{r['optimizer']:16} {'on' if r['overlap'] else 'off':>7} {r['nprocs']:>5} {r['ms']:>9.1f} "
                  f"{r['cpu_ms']:>7.1f} {r['wait_ms']:>7.1f} {r['sent_mb']:>13.2f} "
                  f"{r['x_matrices']:>10.2f} {share:>9} {ns_ms:>20}")
            if r.get("phases_cpu_s"):
                print("    CPU s per step in", ", ".join(f"{k} {v:.2f}" for k, v in r["phases_cpu_s"].items()))


if __name__ == "__main__":
    main()
