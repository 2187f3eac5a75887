"""Host (Python) cost of one optimizer step on a GPT-shaped list of 196 tensors.

The tensors have the ranks of ``descent.reporting.bench.gpt_shapes()`` (the ``gpt20M`` list
of ``benchmarks/step_speed.py``) but every dimension divided by 80 (at least 2), so the
kernels' own work is near zero and what is left is the step's Python: the optimizer loop,
state look-ups, step counters, the launcher's plan and addresses. The number is CPU time
(``time.process_time``, all threads of this process) per step, the median of ``--rounds``
rounds of ``--steps`` steps, so a loaded machine changes it little.

Usage:
    python benchmarks/step_overhead.py                          # every optimizer below
    python benchmarks/step_overhead.py --only Adafactor LAMB --steps 500
    python benchmarks/step_overhead.py --only Adafactor --profile 25   # + cProfile, top 25 entries
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

import torch

import descent
from descent.reporting.bench import gpt_shapes

#: The optimizers measured, as ``benchmarks/step_speed.py`` builds them (default backends).
OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "Adafactor": lambda ps: descent.Adafactor(ps, lr=1e-3, relative_step=False),
    "LAMB": lambda ps: descent.LAMB(ps, lr=1e-3),
    "Lion": lambda ps: descent.Lion(ps, lr=1e-4),
    "AdamW": lambda ps: descent.AdamW(ps, lr=1e-3),
    "SophiaG": lambda ps: descent.SophiaG(ps, lr=1e-4),
    "RMSprop": lambda ps: descent.RMSprop(ps, lr=0.01),
}


def tiny_params(divisor: int = 80, seed: int = 0) -> list[torch.nn.Parameter]:
    """The 196 GPT-shaped tensors with every dimension divided by ``divisor`` (at least 2), with gradients."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in gpt_shapes():
        small = tuple(max(2, d // divisor) for d in shape)
        p = torch.nn.Parameter(torch.randn(small, generator=g) * 0.02)
        p.grad = torch.randn(small, generator=g) * 1e-3
        params.append(p)
    return params


def overhead_us(make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], steps: int, rounds: int) -> float:
    """Median CPU microseconds per step of ``make(tiny_params())``, after 20 warm-up steps."""
    opt = make(tiny_params())
    for _ in range(20):
        opt.step()
    per_round = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(steps):
            opt.step()
        per_round.append((time.process_time() - t0) / steps * 1e6)
    return statistics.median(per_round)


def profile(make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], steps: int, top: int) -> None:
    """Print cProfile's ``top`` entries by internal time over ``steps`` steps."""
    opt = make(tiny_params())
    for _ in range(20):
        opt.step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        opt.step()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(OPTIMIZERS), help="optimizers (default: all)")
    parser.add_argument("--steps", type=int, default=300, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the median is printed)")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP",
                        help="also print cProfile's TOP entries (by internal time) of each optimizer's steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.only or list(OPTIMIZERS)
    print(f"{'optimizer':<12}{'us/step (CPU)':>15}   ({len(gpt_shapes())} tiny tensors)")
    for name in names:
        print(f"{name:<12}{overhead_us(OPTIMIZERS[name], args.steps, args.rounds):>15.1f}", flush=True)
        if args.profile:
            profile(OPTIMIZERS[name], args.steps, args.profile)


if __name__ == "__main__":
    main()
