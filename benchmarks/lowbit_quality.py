"""Final validation loss of low-bit-state and bf16 optimizers against their fp32 versions.

Usage:
    python benchmarks/lowbit_quality.py --task digits-cnn --min-numel 0 --steps 300
    python benchmarks/lowbit_quality.py --task charlm --steps 300

Every configuration trains the same seeded models on the same batches with the same lr
and steps (constant lr); the table gives the mean final validation loss over the seeds
and its relative difference to the fp32 row of the same optimizer. ``--min-numel 0``
quantizes every tensor (digits-cnn has none of the default 4096 elements).
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch

import descent
import descent.lowbit.optim as lowbit_optim
from descent.tasks import get_task

CONFIGS = {
    "adamw": ("adamw", dict(), torch.float32),
    "adamw state_bits=8": ("adamw", dict(state_bits=8), torch.float32),
    "adamw state_bits=4": ("adamw", dict(state_bits=4), torch.float32),
    "lion": ("lion", dict(), torch.float32),
    "lion state_bits=8": ("lion", dict(state_bits=8), torch.float32),
    "lion state_bits=4": ("lion", dict(state_bits=4), torch.float32),
    "sgd momentum": ("sgd", dict(momentum=0.9), torch.float32),
    "sgd momentum state_bits=8": ("sgd", dict(momentum=0.9, state_bits=8), torch.float32),
    "sgd momentum state_bits=4": ("sgd", dict(momentum=0.9, state_bits=4), torch.float32),
    "adamw bf16 round-to-nearest": ("adamw", dict(), torch.bfloat16),
    "adamw bf16 stochastic_rounding": ("adamw", dict(stochastic_rounding=True), torch.bfloat16),
    "adamw bf16 kahan_summation": ("adamw", dict(kahan_summation=True), torch.bfloat16),
}
CLASSES = {"adamw": descent.AdamW, "lion": descent.Lion, "sgd": descent.SGD}


@functools.lru_cache(maxsize=None)
def _task(name: str):  # noqa: ANN202 - a descent.tasks.Task
    return get_task(name)


def run(task_name: str, config: str, seed: int, steps: int) -> float:
    """Train one seeded model with ``config``; return its final validation loss (float32 eval)."""
    name, kw, dtype = CONFIGS[config]
    task = _task(task_name)
    model = task.make_model(seed).to(dtype)
    lr = task.lr_for(name)
    opt = CLASSES[name](model.parameters(), lr=lr, weight_decay=0.01 if name != "sgd" else 0.0, **kw)
    for step in range(steps):
        x, y = task.train.at(step)
        if x.is_floating_point():
            x = x.to(dtype)
        opt.zero_grad()
        task.loss_fn(model(x).float(), y).backward()
        opt.step()
    model.float()
    return float(task.evaluate(model)["val_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits-cnn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--min-numel", type=int, default=None, help="quantize tensors from this size (default 4096)")
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    args = parser.parse_args()
    if args.min_numel is not None:
        lowbit_optim.MIN_NUMEL = args.min_numel
    unknown = set(args.only or ()) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}; known: {sorted(CONFIGS)}")
    torch.manual_seed(0)
    rows = {}
    for config in args.only or CONFIGS:
        losses = [run(args.task, config, seed, args.steps) for seed in range(args.seeds)]
        rows[config] = losses
        print(f"{config}: {losses}", flush=True)
    print(f"{args.task}, {args.steps} steps, seeds 0..{args.seeds - 1}, min_numel "
          f"{lowbit_optim.MIN_NUMEL}: final val loss (mean, per seed) and difference to fp32")
    for config, losses in rows.items():
        base_name = {"adamw": "adamw", "lion": "lion", "sgd": "sgd momentum"}[CONFIGS[config][0]]
        base = statistics.mean(rows[base_name]) if base_name in rows else float("nan")
        mean = statistics.mean(losses)
        spread = ""
        if base_name in rows and base_name != config and len(losses) > 1:  # paired by seed
            diffs = [100 * (a / b - 1) for a, b in zip(losses, rows[base_name])]
            spread = f"  (per seed {statistics.mean(diffs):+.2f} +- {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f} % s.e.)"
        print(f"{config:34s} {mean:.4f}  ({', '.join(f'{v:.4f}' for v in losses)})  {100 * (mean / base - 1):+.2f} %"
              f"{spread}")


if __name__ == "__main__":
    main()
