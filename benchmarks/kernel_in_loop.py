"""Does a descent Numba kernel slow torch down inside a training loop?

descent's CPU kernels run on Numba's thread pool and torch's forward/backward on torch's;
two pools on two cores could get in each other's way. This times whole training steps
(forward, backward, optimizer step, zero_grad) of a 2.6M-parameter MLP on a batch of 256,
the configurations taking turns, and prints the median per step next to forward+backward
alone, so the optimizer's share is the difference.

Run:
    python benchmarks/kernel_in_loop.py
    python benchmarks/kernel_in_loop.py --rounds 2 --iters 5   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import descent


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024), torch.nn.GELU(),
              torch.nn.Linear(1024, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 10)]
    return torch.nn.Sequential(*layers)


def _runner(make_opt: Callable | None, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model = _model()
    opt = make_opt(model.parameters()) if make_opt else None

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=10, help="steps per configuration per round")
    args = parser.parse_args()
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    configs = {
        "forward+backward only": None,
        "Lion (kernel)": lambda p: descent.Lion(p, lr=1e-4),
        "Lion (loop)": lambda p: descent.Lion(p, lr=1e-4, backend="loop"),
        "LAMB (kernel)": lambda p: descent.LAMB(p),
        "LAMB (loop)": lambda p: descent.LAMB(p, backend="loop"),
        "AdamW (torch's fused kernel)": lambda p: descent.AdamW(p),
    }
    steps = {name: _runner(make, x, y) for name, make in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.iters):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    print(f"ms per training step (median of {args.rounds * args.iters}), threads: {torch.get_num_threads()}")
    for name, ts in times.items():
        print(f"{name:<30} {statistics.median(ts) * 1e3:7.1f}")


if __name__ == "__main__":
    main()
