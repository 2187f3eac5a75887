"""A fair optimizer comparison on descent's built-in tasks (AlgoPerf's rules in miniature).

Every optimizer gets the same budget: ``--trials`` quasi-random (scrambled Sobol) points
of its declared search space (lr log-uniform over a 100x range around its declared
default for the task kind, weight decay log-uniform, warm-up fraction uniform in [0, 0.1]),
each trained on seed 0 and scored on the validation split; the best point is then rerun
on ``--seeds`` fresh seeds (new data split and initialisation) and reported: final
validation loss, the task's headline metric (test accuracy for the classifiers) with its
spread, and steps-to-target, the first evaluation at which the validation loss reaches
the target (tuned AdamW's median final validation loss on the same seeds).

Every run uses linear warm-up then cosine decay to 0, except schedule-free AdamW (constant
lr after its warm-up; evaluated at its average x, with BatchNorm statistics recomputed
there). AdEMAMix warms alpha/beta3 up over the whole run (the paper's choice).

Usage (a loaded 2-core machine: expect minutes per task and optimizer)::

    python benchmarks/optimizer_quality.py --tasks logistic digits-cnn mnist1d charlm \
        --steps 300 --trials 8 --seeds 3 --out optimizer_quality.json

The table shows the search too (every trial's hyperparameters and validation loss go to
``--out``). Timings are not the point here and are not reported. Runs split across processes
(``--optimizers`` subsets of one task and budget, each with its own ``--out``) are joined into
one table, steps-to-target included, with ``--merge a.json b.json``.

``--sweep-lrs`` instead trains each optimizer at each given lr (no warm-up, no weight decay)
on seeds 0..``--seeds``-1 and prints the final validation loss per lr, e.g. the check of
ScheduleFreeSGD's default lr::

    python benchmarks/optimizer_quality.py --optimizers schedulefree-sgd --sweep-lrs 0.01 0.03 0.1 0.3 1 \
        --tasks logistic linear digits-mlp mnist1d digits-cnn rosenbrock quadratic --steps 200 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from descent.tasks.tuning import compare_tuned, summarize, table

#: the optimizers of issue 15's table ("sgd" is the registry's Nesterov-momentum preset)
OPTIMIZERS = ["adamw", "sgd", "muon", "shampoo", "soap", "schedulefree-adamw", "prodigy", "ademamix", "mars", "lion"]

def sweep_line(task_name: str, name: str, lrs: list[float], steps: int, seeds: int) -> str:
    """One line: ``name`` on ``task_name`` at each lr, final validation loss per seed (inf: diverged)."""
    from descent.tasks.tuning import run

    cells = []
    for lr in lrs:
        losses = [run(task_name, name, {"lr": lr, "weight_decay": 0.0, "warmup": 0.0}, steps, seed, 0)
                  for seed in range(seeds)]
        vals = [r["final"].get("val_loss", float("inf")) for r in losses]
        cells.append(f"lr {lr:g}: " + "/".join(f"{v:.4g}" for v in vals))
    return f"{task_name} {name} ({steps} steps) " + ", ".join(cells)


def merged(paths: list[str]) -> list[dict]:
    """The results in ``paths`` (``--out`` files), one per task, the optimizers of a task joined.

    Raises ``ValueError`` when two files ran one task with different budgets (not comparable).
    """
    tasks: dict[str, dict] = {}
    for path in paths:
        with open(path) as fh:
            for result in json.load(fh):
                seen = tasks.setdefault(result["task"], {**result, "optimizers": {}})
                budget = [result[k] for k in ("steps", "trials", "seeds")]
                if budget != [seen[k] for k in ("steps", "trials", "seeds")]:
                    raise ValueError(f"Invalid --merge: {path} ran {result['task']} with steps/trials/seeds {budget}, "
                                     f"another file with {[seen[k] for k in ('steps', 'trials', 'seeds')]}")
                seen["optimizers"].update(result["optimizers"])
    return list(tasks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["logistic", "digits-cnn", "mnist1d", "charlm"])
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=0, help="default: steps // 10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write every trial and run as JSON here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="print the tables of earlier --out files, joining the optimizers of one task")
    parser.add_argument("--sweep-lrs", nargs="+", type=float, default=None, metavar="LR",
                        help="print final validation loss per lr instead of tuning")
    args = parser.parse_args(argv)
    if args.sweep_lrs:
        torch.set_num_threads(args.threads)
        for task_name in args.tasks:
            for name in args.optimizers:
                print(sweep_line(task_name, name, args.sweep_lrs, args.steps, args.seeds), flush=True)
        return 0
    if args.merge:
        for result in merged(args.merge):
            print(table(result["task"], summarize(result)) + "\n")
        return 0
    if args.steps < 10 or args.trials < 1 or args.seeds < 1:
        parser.error("--steps must be >= 10, --trials and --seeds >= 1")
    torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    every = args.eval_every or max(1, args.steps // 10)
    everything = []
    for task_name in args.tasks:
        start = time.perf_counter()
        result = compare_tuned(task_name, args.optimizers, args.steps, args.trials, args.seeds, every, log)
        result["seconds"] = time.perf_counter() - start
        everything.append(result)
        print(table(task_name, summarize(result)) + "\n", flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(everything, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
