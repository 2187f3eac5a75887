"""Fair optimizer comparison on a built-in task: an equal tuning budget, then fresh seeds.

AlgoPerf's rules in miniature, used by ``descent compare --tune N`` and
``benchmarks/optimizer_quality.py``: every optimizer gets the same ``trials`` points of
its search space (:func:`sample_space`), each trained on seed 0 and scored by validation
loss; the best point is rerun on fresh seeds (new split and initialisation) and reported
with its spread and the steps it needs to reach a target validation loss (by default the
tuned AdamW's median final one).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from ..optim import recalibrate_batchnorm
from ..optim.registry import create_optimizer, default_lr
from . import get_task

__all__ = ["SPACES", "sample_space", "run", "compare_tuned", "summarize", "table"]


#: registry name -> (log10 range of the weight decay, lr range factor around the declared default).
#: Coupled-decay SGD takes a smaller decay, Lion a larger one (its lr is 3-10x smaller), Prodigy's
#: lr is a multiplier of its own estimate (3x either way). Any other optimizer: (-5, -1), 10.
SPACES: dict[str, tuple[tuple[float, float], float]] = {
    "sgd": ((-6, -3), 10.0), "sgd-plain": ((-6, -3), 10.0), "momentum": ((-6, -3), 10.0),
    "lion": ((-4, 0), 10.0), "prodigy": ((-5, -1), 3.0),
}


def sample_space(name: str, kind: str, trials: int, seed: int = 0) -> list[dict[str, float]]:
    """``trials`` points of registered optimizer ``name``'s search space (scrambled Sobol, seeded).

    Every optimizer gets the same points of the unit cube, mapped to its own ranges: lr
    log-uniform over ``[lr0/f, lr0*f]`` around its declared default ``lr0`` for the task
    kind, weight decay log-uniform over its range, warm-up fraction uniform in [0, 0.1].

    Example:
        >>> [round(p["warmup"], 3) for p in sample_space("adamw", "classification", 2)]
        [0.049, 0.086]
    """
    (wd_lo, wd_hi), factor = SPACES.get(name, ((-5, -1), 10.0))
    lr0 = default_lr(name, kind)
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
    """Train one seeded model with optimizer ``name`` and hyperparameters ``hp``.

    Linear warm-up then cosine decay to 0, except schedule-free optimizers (their own
    warm-up, constant lr, evaluated at the average x with BatchNorm statistics recomputed
    there); AdEMAMix warms alpha/beta3 up over the whole run.

    Returns:
        ``{"curve": [(step, val_loss), ...], "final": task.evaluate(...), "diverged": bool}``.
    """
    task = get_task(task_name, seed=seed)
    model = task.make_model(seed)
    reg, kwargs = name, {}
    warm = int(hp["warmup"] * steps)
    schedule_free = reg.startswith("schedulefree")
    if schedule_free:
        kwargs["warmup_steps"] = warm
    if reg == "ademamix":
        kwargs["t_alpha_beta3"] = steps
    opt = create_optimizer(reg, model, lr=hp["lr"], weight_decay=hp["weight_decay"], task_kind=task.kind,
                                   **kwargs)
    sched = None if schedule_free else _schedule(opt, steps, warm, cosine=True)

    def evaluate() -> dict[str, float]:
        if schedule_free:
            recalibrate_batchnorm(model, [task.train.at(steps + i)[0] for i in range(4)], opt)
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
                  eval_every: int, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tune every optimizer with the same budget, rerun the best on ``seeds`` seeds.

    Args:
        task_name: a built-in task (:data:`descent.tasks.TASKS`).
        names: registered optimizer names.
        steps: training steps of every run.
        trials: search points per optimizer (the budget).
        seeds: fresh seeds (1..seeds) the best point is rerun on.
        eval_every: validation interval of the reruns (for steps-to-target).
        log: called with one line per trial (progress).

    Returns:
        ``{"task", "steps", "trials", "seeds", "optimizers": {name: {"search", "best", "runs"}}}``.
    """
    if trials < 1 or seeds < 1 or steps < 1:
        raise ValueError(f"Invalid budget: trials={trials}, seeds={seeds}, steps={steps} (each must be >= 1)")
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
        reruns = []
        for s in range(1, seeds + 1):
            reruns.append(run(task_name, name, best, steps, seed=s, eval_every=eval_every))
            if log:
                log(f"{task_name} {name} best point, seed {s}: val_loss {_score(reruns[-1]):.4f}")
        out["optimizers"][name] = {"search": search, "best": best, "runs": reruns}
    return out


def summarize(result: dict[str, Any], target_from: str = "adamw") -> list[dict[str, Any]]:
    """One row per optimizer: metric (mean, std) over seeds and (median steps, reached, runs) to the target.

    The target is ``target_from``'s median final validation loss (no steps column without it).
    """
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
    head = ["optimizer", "lr", "wd", *metric_keys, "steps to target val loss"]
    lines = [f"**{task_name}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["optimizer"], f"{r['lr']:.2g}", f"{r['weight_decay']:.1g}"]
        for k in metric_keys:
            cells.append("—" if r.get(k) is None else f"{r[k][0]:.4f} ± {r[k][1]:.4f}")
        s = r.get("steps_to_target")
        if s is None:
            cells.append("—")
        else:
            cells.append(f"{s[0]:.0f} ({s[1]}/{s[2]})" if s[0] is not None else f"never (0/{s[2]})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
