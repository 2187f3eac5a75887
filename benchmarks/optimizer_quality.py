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
``--out``). Timings are not the point here and are not reported.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

import torch

import descent
from descent.optim.registry import default_lr
from descent.tasks import get_task

#: name -> (registry name, fixed kwargs, weight-decay range (log10 low, high), lr range factor)
SPACES: dict[str, tuple[str, dict[str, Any], tuple[float, float], float]] = {
    "adamw": ("adamw", {}, (-5, -1), 10.0),
    "sgd-nesterov": ("sgd", {}, (-6, -3), 10.0),
    "muon": ("muon", {}, (-5, -1), 10.0),
    "shampoo": ("shampoo", {}, (-5, -1), 10.0),
    "soap": ("soap", {}, (-5, -1), 10.0),
    "schedulefree-adamw": ("schedulefree-adamw", {}, (-5, -1), 10.0),
    "prodigy": ("prodigy", {}, (-5, -1), 3.0),
    "ademamix": ("ademamix", {}, (-5, -1), 10.0),
    "mars": ("mars", {}, (-5, -1), 10.0),
    "lion": ("lion", {}, (-4, 0), 10.0),
}


def sample_space(name: str, kind: str, trials: int, seed: int = 0) -> list[dict[str, float]]:
    """``trials`` points of ``name``'s search space (scrambled Sobol, seeded)."""
    reg, _, (wd_lo, wd_hi), factor = SPACES[name]
    lr0 = default_lr(reg, kind)
    pts = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed).draw(trials).double()
    out = []
    for u_lr, u_wd, u_warm in pts.tolist():
        out.append({"lr": lr0 * factor ** (2 * u_lr - 1), "weight_decay": 10 ** (wd_lo + (wd_hi - wd_lo) * u_wd),
                    "warmup": 0.1 * u_warm})
    return out


def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: int, cosine: bool) -> Any:
    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def run(task_name: str, name: str, hp: dict[str, float], steps: int, seed: int, eval_every: int) -> dict[str, Any]:
    """Train one seeded model; returns the validation curve and the final metrics."""
    task = get_task(task_name, seed=seed)
    model = task.make_model(seed)
    reg, fixed, _, _ = SPACES[name]
    kwargs = dict(fixed)
    warm = int(hp["warmup"] * steps)
    schedule_free = reg.startswith("schedulefree")
    if schedule_free:
        kwargs["warmup_steps"] = warm
    if reg == "ademamix":
        kwargs["t_alpha_beta3"] = steps
    opt = descent.create_optimizer(reg, model, lr=hp["lr"], weight_decay=hp["weight_decay"], task_kind=task.kind,
                                   **kwargs)
    sched = None if schedule_free else _schedule(opt, steps, warm, cosine=True)

    def evaluate() -> dict[str, float]:
        if schedule_free:
            descent.recalibrate_batchnorm(model, [task.train.at(steps + i)[0] for i in range(4)], opt)
            opt.eval()
        metrics = task.evaluate(model)
        if schedule_free:
            opt.train()
        return metrics

    curve = []
    model.train()
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, task.train.at(t))
        if not torch.isfinite(loss):
            return {"curve": curve, "final": {"val_loss": float("inf")}, "diverged": True}
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if eval_every and (t + 1) % eval_every == 0 and t + 1 < steps:
            curve.append((t + 1, evaluate()["val_loss"]))
    final = evaluate()
    curve.append((steps, final["val_loss"]))
    return {"curve": curve, "final": final, "diverged": False}


def _score(result: dict[str, Any]) -> float:
    v = result["final"].get("val_loss", float("inf"))
    return v if v == v else float("inf")


def compare_tuned(task_name: str, names: list[str], steps: int, trials: int, seeds: int,
                  eval_every: int, log: Any = None) -> dict[str, Any]:
    """Tune every optimizer with the same budget, rerun the best on ``seeds`` seeds; returns everything."""
    kind = get_task(task_name).kind
    out: dict[str, Any] = {"task": task_name, "steps": steps, "trials": trials, "seeds": seeds, "optimizers": {}}
    for name in names:
        search = []
        for hp in sample_space(name, kind, trials):
            res = run(task_name, name, hp, steps, seed=0, eval_every=0)
            search.append({"hp": hp, "val_loss": _score(res)})
            if log:
                log(f"{task_name} {name} trial {len(search)}: {hp} -> val_loss {search[-1]['val_loss']:.4f}")
        best = min(search, key=lambda r: r["val_loss"])["hp"]
        reruns = [run(task_name, name, best, steps, seed=s, eval_every=eval_every) for s in range(1, seeds + 1)]
        out["optimizers"][name] = {"search": search, "best": best, "runs": reruns}
    return out


def summarize(result: dict[str, Any], target_from: str = "adamw") -> list[dict[str, Any]]:
    """One row per optimizer: metrics mean/std over seeds and median steps to AdamW's final val loss."""
    opts = result["optimizers"]
    ref = opts.get(target_from)
    target = statistics.median(_score(r) for r in ref["runs"]) if ref else None
    rows = []
    for name, o in opts.items():
        runs = o["runs"]
        row: dict[str, Any] = {"optimizer": name, "lr": o["best"]["lr"], "weight_decay": o["best"]["weight_decay"]}
        keys = sorted({k for r in runs for k in r["final"]})
        for key in keys:
            vals = [r["final"][key] for r in runs if key in r["final"] and math.isfinite(r["final"][key])]
            row[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else None
        if target is not None:
            hits = [next((s for s, v in r["curve"] if v <= target), None) for r in runs]
            reached = [h for h in hits if h is not None]
            row["steps_to_target"] = (statistics.median(reached) if reached else None, len(reached), len(runs))
        rows.append(row)
    return rows


def table(task_name: str, rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`summarize`'s rows."""
    metric_keys = [k for k in rows[0] if k not in ("optimizer", "lr", "weight_decay", "steps_to_target")]
    head = ["optimizer", "lr", "wd", *metric_keys, "steps to AdamW's val loss"]
    lines = [f"**{task_name}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["optimizer"], f"{r['lr']:.2g}", f"{r['weight_decay']:.1g}"]
        for k in metric_keys:
            cells.append("—" if r.get(k) is None else f"{r[k][0]:.4f} ± {r[k][1]:.4f}")
        s = r.get("steps_to_target")
        cells.append("—" if s is None else (f"{s[0]:.0f} ({s[1]}/{s[2]})" if s[0] is not None else f"never (0/{s[2]})"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["logistic", "digits-cnn", "mnist1d", "charlm"])
    parser.add_argument("--optimizers", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=0, help="default: steps // 10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write every trial and run as JSON here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
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
