"""Training-step time and device memory with and without descent.CPUOffloadOptimizer.

Usage:
    python benchmarks/offload_step.py                     # GPU: an MLP stack of ~0.5B parameters, bf16
    python benchmarks/offload_step.py --width 1024 --depth 4 --dtype fp32
    python benchmarks/offload_step.py --device cpu --width 256 --depth 2   # smoke run of the script itself

Each row is one full step (forward, backward, optimizer step) of a stack of ``depth``
square ``Linear(width, width)`` layers with GELU, a batch of ``--batch`` rows: the median
wall-clock ms over ``--iters`` steps after ``--warmup`` (the device synchronized after each
step, so the time includes the host step and the copies), and the peak device memory
allocated during those steps. Rows: ``descent.AdamW`` on the device; the same in
``CPUOffloadOptimizer`` with gradients copied at the step, and with
``offload_gradients=True`` (copied during the backward, device gradients freed).

Exits with a message (status 0) on a machine without CUDA unless ``--device cpu`` is given;
CPU timings are of the copies and the host step only and say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import descent

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(width: int, depth: int, dtype: torch.dtype, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(label: str, make_opt, args: argparse.Namespace) -> dict:
    device, dtype = args.device, DTYPES[args.dtype]
    model = build(args.width, args.depth, dtype, device)
    opt = make_opt(model)
    x = torch.randn(args.batch, args.width, device=device, dtype=dtype)
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.iters):
        sync(device)
        start = time.perf_counter()
        model(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sync(device)
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    n = sum(p.numel() for p in model.parameters())
    del opt, model
    return {"label": label, "ms": statistics.median(times), "peak_gib": peak, "params": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("offload_step.py: no CUDA device here; nothing to measure (use --device cpu for a smoke run)")
        return 0
    rows = [
        run("AdamW on the device", lambda m: descent.AdamW(m.parameters(), lr=1e-4), args),
        run("CPUOffloadOptimizer(AdamW), grads at step",
            lambda m: descent.CPUOffloadOptimizer(m.parameters(), "adamw", lr=1e-4), args),
        run("CPUOffloadOptimizer(AdamW), offload_gradients=True",
            lambda m: descent.CPUOffloadOptimizer(m.parameters(), "adamw", lr=1e-4, offload_gradients=True), args),
    ]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke run, not a GPU timing)"
    print(f"{name}; {rows[0]['params'] / 1e6:.1f}M parameters ({args.dtype}), batch {args.batch}; "
          f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    print(f"{'':52s} {'ms/step':>9s} {'x device':>9s} {'peak GiB':>9s}")
    for r in rows:
        print(f"{r['label']:52s} {r['ms']:9.1f} {r['ms'] / rows[0]['ms']:9.2f} {r['peak_gib']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
