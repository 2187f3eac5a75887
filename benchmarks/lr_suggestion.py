"""Is the LR suggestion good for a real run?  find_lr(total_steps=T) against a grid of full runs.

For every task x optimizer x seed: a grid of full runs of ``T`` steps (``descent.tasks.training.train``:
warmup-cosine to 10 %, the task's batches) at quarter-decade lrs (a half-decade scan over 3.5 decades,
then the quarter-decade neighbours of the best, extended while the best sits at an edge), the
suggestion of :func:`descent.tools.task_lr.find_task_lr` for that run, and the final validation loss
of a full run at the suggestion. Target: within 10 % (+0.02) of the grid's best on >= 90 % of the
rows, within 25 % on all.

    python benchmarks/lr_suggestion.py                      # all 6 tasks x 4 optimizers x 3 seeds
    python benchmarks/lr_suggestion.py --quick              # 2 tasks, 1 seed, short runs
    python benchmarks/lr_suggestion.py --tasks linear,charlm --optimizers adamw --seeds 0
    python benchmarks/lr_suggestion.py --calibrate          # the synthetic problems the constants were chosen on
    python benchmarks/lr_suggestion.py --tasks digits-mlp --seeds 3,4,5 --cache runs.json --floor --json a.json
    python benchmarks/lr_suggestion.py --markdown a.json    # the README tables (and the noise floor with --floor)

``--cache`` keeps every full run's validation loss, so after a change of the method only the range
test, the probes and one full run per row run again; ``--floor`` also reruns the grid's best lr times
0.94 ... 1.06 (how much a few % of lr, or 0.1 %, moves the final loss: the noise any lr rule faces).

``--calibrate`` runs the same comparison on two synthetic problems (or ``--tasks`` with seeds other than
0-2) for variants of the method's constants (probe fraction, horizon exponent); that is where the
defaults in ``descent.tools._lr_probe`` come from (see ``descent.find_lr`` for the runs and numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import torch
from torch import nn

from descent.tasks import get_task
from descent.tasks._base import Batches, Task, accuracy_eval, mean_loss, seeded
from descent.tasks.training import train
from descent.tools import _lr_probe
from descent.tools.task_lr import find_task_lr

#: benchmark name -> descent.tasks.training.OPTIMIZERS name
OPTIMIZERS = {"sgd-nesterov": "sgd", "adamw": "adamw", "lion": "lion", "muon": "muon"}
#: the coarse scan, in quarter decades (lr = 10 ** (q / 4)): half-decade steps over 3 decades
SCAN = {"sgd": range(-10, 3, 2), "adamw": range(-14, -1, 2), "lion": range(-18, -5, 2), "muon": range(-10, 3, 2)}
#: steps of one full run per task (small: this machine has 2 shared cores)
STEPS = {"digits-mlp": 120, "digits-cnn": 100, "mnist1d": 120, "charlm": 60, "logistic": 100, "linear": 100,
         "teacher": 200, "lsq": 150}
TASKS = ["digits-mlp", "digits-cnn", "mnist1d", "charlm", "logistic", "linear"]


#: ``--cache``: validation losses of full runs keyed by task|optimizer|seed|steps|lr (JSON file), so that a
#: change of the method reruns only the suggestion and its full run
_CACHE: dict[str, float] = {}
_CACHE_PATH: list[str] = []
#: ``--floor``: the grid's best lr times these factors (how much a few % of lr moves the final loss)
FLOOR = (0.94, 0.97, 0.999, 1.001, 1.03, 1.06)


def use_cache(path: str) -> None:
    """Read (and from now on write) the full-run cache ``path`` (merged with what is already there)."""
    _CACHE_PATH[:] = [path]
    if os.path.exists(path):
        with open(path) as f:
            _CACHE.update(json.load(f))


def _save_cache() -> None:
    path = _CACHE_PATH[0]
    if os.path.exists(path):  # merge what parallel processes wrote meanwhile
        with open(path) as f:
            _CACHE.update({k: v for k, v in json.load(f).items() if k not in _CACHE})
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(_CACHE, f)
    os.replace(tmp, path)


def _val(task: Task, opt: str, lr: float, steps: int, seed: int) -> float:
    key = f"{task.name}|{opt}|{seed}|{steps}|{lr:.10g}"
    if key in _CACHE:
        v = float(_CACHE[key])
    else:
        res = train(task, opt, lr, steps, seed=seed)
        v = float(res.final.get("val_loss", math.nan))
        if _CACHE_PATH:
            _CACHE[key] = v if math.isfinite(v) else float("inf")
            _save_cache()
    return v if math.isfinite(v) else math.inf


def grid(task: Task, opt: str, steps: int, seed: int, scan: Any = None) -> dict[int, float]:
    """Validation loss of full runs at quarter-decade lrs ``10 ** (q / 4)``, keyed by ``q``."""
    out: dict[int, float] = {}
    scan = SCAN[opt] if scan is None else scan

    def run(q: int) -> None:
        if q not in out:
            out[q] = _val(task, opt, 10.0 ** (q / 4), steps, seed)

    for q in scan:
        run(q)
    for _ in range(4):  # extend while the best sits at an edge
        best = min(out, key=lambda k: (out[k], k))
        if best == max(out):
            run(best + 2)
        elif best == min(out):
            run(best - 2)
        else:
            break
    best = min(out, key=lambda k: (out[k], k))
    run(best - 1)
    run(best + 1)
    return out


def row(name: str, opt_label: str, seed: int, steps: int | None = None, scan: Any = None,
        floor: bool = False) -> dict[str, Any]:
    """One benchmark row: the grid, the suggestion and their validation losses."""
    opt = OPTIMIZERS[opt_label]
    task = make_task(name, seed)
    steps = steps or STEPS[name]
    t0 = time.perf_counter()
    g = grid(task, opt, steps, seed, scan)
    qbest = min(g, key=lambda k: (g[k], k))
    res = find_task_lr(task, opt, steps, seed=seed)
    sugg = res.suggestion
    used = sugg if sugg is not None else task.lr_for(opt)  # what the CLI does without a suggestion
    loss = _val(task, opt, used, steps, seed)
    best = g[qbest]
    near = {f"{c:g}": _val(task, opt, c * 10.0 ** (qbest / 4), steps, seed) for c in FLOOR} if floor else {}
    return {"task": name, "optimizer": opt_label, "seed": seed, "steps": steps, "best_lr": 10.0 ** (qbest / 4),
            "best_loss": best, "suggestion": sugg, "used_lr": used, "low": res.low, "high": res.high, "reason": res.reason,
            "loss": loss, "ratio": loss / best if best > 0 else math.inf,
            "within10": loss <= 1.10 * best + 0.02, "within25": loss <= 1.25 * best,
            "grid": {f"{10.0 ** (q / 4):.3g}": v for q, v in sorted(g.items())}, "floor": near,
            "probes": {f"{k:.6g}": v for k, v in res.probes.items()}, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------ synthetic problems (calibration only)
def _teacher(seed: int, batch_size: int = 32) -> Task:
    """Teacher-student: labels sampled from a random MLP's softmax; student MLP 20-64-10."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3000, 20, generator=g)
    w1, w2 = torch.randn(20, 32, generator=g) / 20 ** 0.5, torch.randn(32, 10, generator=g) * 3 / 32 ** 0.5
    y = torch.multinomial(torch.softmax(torch.tanh(x @ w1) @ w2, -1), 1, generator=g).squeeze(1)
    make = seeded(lambda: nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)))
    return Task("teacher", "synthetic teacher-student", make(seed), Batches(x[:2000], y[:2000], batch_size, seed=seed),
                Batches(x[2000:], y[2000:], 500, shuffle=False), None, nn.functional.cross_entropy, make, accuracy_eval)


def _lsq(seed: int, batch_size: int = 32) -> Task:
    """Ill-conditioned (spectrum 1 .. 0.03) noisy regression, MLP 20-32-1 (tanh), MSE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2000, 20, generator=g) * torch.logspace(0, -1.5, 20)
    y = (x @ torch.randn(20, generator=g) * 3 + torch.sin(3 * x[:, 0]) + 0.3 * torch.randn(2000, generator=g))[:, None]
    make = seeded(lambda: nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 1)))

    def evaluate(task: Task, model: nn.Module) -> dict[str, float]:
        return {"val_loss": mean_loss(task.loss_fn, model, task.val)}
    return Task("lsq", "synthetic regression", make(seed), Batches(x[:1500], y[:1500], batch_size, seed=seed),
                Batches(x[1500:], y[1500:], 500, shuffle=False), None, nn.functional.mse_loss, make, evaluate)


def make_task(name: str, seed: int) -> Task:
    if name == "teacher":
        return _teacher(seed)
    if name == "lsq":
        return _lsq(seed)
    return get_task(name, seed=seed)


def calibrate(optimizers: list[str], seeds: list[int], names: list[str], out: str | None = None) -> None:
    """The method's variants on calibration problems and seeds: where the constants were chosen.

    For each probe fraction the probes run once; the suggestion for each horizon exponent
    ``alpha`` is the best probe's lr times ``(P / T) ** alpha``, and a full run at it is scored
    against the grid's best. The totals per variant are printed at the end.
    """
    fracs, alphas, rows = (0.25, 0.5), (0.0, 0.25, 0.5), []
    saved = _lr_probe.PROBE_FRACTION
    for name in names:
        for label in optimizers:
            for seed in seeds:
                task, opt, steps = make_task(name, seed), OPTIMIZERS[label], STEPS.get(name, 120)
                g = grid(task, opt, steps, seed)
                best = min(g.values())
                row_: dict[str, Any] = {"task": name, "optimizer": label, "seed": seed, "best": best,
                                        "best_lr": 10 ** (min(g, key=lambda k: (g[k], k)) / 4)}
                for frac in fracs:
                    _lr_probe.PROBE_FRACTION = frac
                    try:
                        sugg = find_task_lr(task, opt, steps, seed=seed).suggestion
                    finally:
                        _lr_probe.PROBE_FRACTION = saved
                    p = _lr_probe.probe_length(steps, frac)
                    for alpha in alphas:  # the suggestion above used HORIZON_EXPONENT; rescale to alpha
                        lr = sugg * (p / steps) ** (alpha - _lr_probe.HORIZON_EXPONENT) if sugg else None
                        row_[f"f{frac:g}/a{alpha:g}"] = (lr, _val(task, opt, lr, steps, seed) if lr else math.inf)
                rows.append(row_)
                print(f"{name:10} {label:13} {seed:5} best {row_['best_lr']:.2e} {best:.4f} | " + " | ".join(
                    f"{k}: {v[0] or 0:.2e} {v[1] / best:.2f}" for k, v in row_.items() if k.startswith("f")), flush=True)
                if out:
                    with open(out, "w") as f:
                        json.dump(rows, f, indent=1)
    for frac in fracs:
        for alpha in alphas:
            r = [(x[f"f{frac:g}/a{alpha:g}"][1], x["best"]) for x in rows]
            print(f"f{frac:g}/a{alpha:g}: within 10 % (+0.02) {sum(v <= 1.1 * b + 0.02 for v, b in r)}/{len(r)}, "
                  f"within 25 % {sum(v <= 1.25 * b for v, b in r)}/{len(r)}, "
                  f"geometric mean ratio {math.exp(sum(math.log(v / b) for v, b in r) / max(len(r), 1)):.3f}")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a README table (one line per task x optimizer, seeds side by side) and the totals."""
    out = ["| task | optimizer | steps | seed: grid best lr / loss -> suggested lr / loss (ratio) |", "|---|---|---|---|"]
    keys = sorted({(r["task"], r["optimizer"]) for r in rows}, key=lambda k: (TASKS.index(k[0]) if k[0] in TASKS
                                                                           else 99, list(OPTIMIZERS).index(k[1])))
    for task, opt in keys:
        cells = []
        for r in (r for r in rows if (r["task"], r["optimizer"]) == (task, opt)):
            mark = " **>25 %**" if not r["within25"] else ("" if r["within10"] else " **>10 %**")
            star = "" if r["suggestion"] else "*"
            cells.append(f"{r['seed']}: {r['best_lr']:.3g} / {r['best_loss']:.4f} -> {r['used_lr']:.3g}{star} / "
                         f"{r['loss']:.4f} ({r['ratio']:.2f}){mark}")
        steps = next(r["steps"] for r in rows if r["task"] == task)
        out.append(f"| {task} | {opt} | {steps} | {'<br>'.join(cells)} |")
    n10, n25 = sum(r["within10"] for r in rows), sum(r["within25"] for r in rows)
    out.append(f"\nWithin 10 % (+0.02) of the grid's best: {n10}/{len(rows)} rows ({n10 / max(len(rows), 1):.0%}); "
               f"within 25 %: {n25}/{len(rows)}.")
    return "\n".join(out)


def floor_markdown(rows: list[dict[str, Any]]) -> str:
    """The noise floor: on rows that miss (or whose grid's best lr misses when moved by a few %), the
    final loss at the grid's best lr times each of :data:`FLOOR`, as a ratio to the grid's best."""
    rows = [r for r in rows if r.get("floor")]
    keys = [f"{c:g}" for c in FLOOR]
    out = ["| row | best lr | loss at best | " + " | ".join(f"x{k}" for k in keys) + " | suggestion's ratio |",
           "|---|---|---|" + "---|" * (len(keys) + 1)]
    worse = 0
    for r in rows:
        ratios = {k: v / r["best_loss"] for k, v in r["floor"].items()}
        worse += max(ratios.values()) > 1.25
        if r["within25"] and max(ratios.values()) <= 1.25:
            continue
        cells = " | ".join("–" if k not in ratios else (f"{r['floor'][k]:.4f} ({ratios[k]:.2f})" if ratios[k] <= 1.25
                           else f"**{r['floor'][k]:.4f} ({ratios[k]:.2f})**") for k in keys)
        out.append(f"| {r['task']} {r['optimizer']} seed {r['seed']} | {r['best_lr']:.3g} | {r['best_loss']:.4f} | "
                   f"{cells} | {r['ratio']:.2f} |")
    runs = [(v, r["best_loss"]) for r in rows for v in r["floor"].values()]
    n10, n25 = sum(v <= 1.1 * b + 0.02 for v, b in runs), sum(v <= 1.25 * b for v, b in runs)
    out.append(f"\nOn {worse}/{len(rows)} rows the grid's own best lr, moved by one of these factors, ends more "
               f"than 25 % above the grid's best. Of all {len(runs)} such runs, {n10} end within 10 % (+0.02) "
               f"of the grid's best and {n25} within 25 %.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--quick", action="store_true", help="digits-mlp and linear, seed 0, 60-step runs")
    p.add_argument("--steps", type=int, help="steps of every run (default: per task, see STEPS)")
    p.add_argument("--calibrate", action="store_true", help="variants of the constants on the synthetic problems, "
                   "seeds 1000,1001 (or --tasks/--seeds, never seeds 0-2)")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--cache", help="JSON cache of full runs (task|optimizer|seed|steps|lr -> validation loss), "
                   "read and extended: a change of the method reruns only the suggestion")
    p.add_argument("--floor", action="store_true", help="also run the grid's best lr x FLOOR (0.94 to 1.06)")
    p.add_argument("--markdown", nargs="+", metavar="JSON", help="print the rows of these --json files as a table")
    args = p.parse_args(argv)
    if args.markdown:
        rows: list[dict[str, Any]] = []
        for path in args.markdown:
            with open(path) as f:
                rows += json.load(f)
        print(markdown(rows))
        if any(r.get("floor") for r in rows):
            print("\n" + floor_markdown(rows))
        return 0
    torch.set_num_threads(1)
    if args.cache:
        use_cache(args.cache)
    opts = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    bad = [o for o in opts if o not in OPTIMIZERS]
    if bad:
        p.error(f"Invalid optimizer: {', '.join(bad)} (valid: {', '.join(OPTIMIZERS)})")
    if args.calibrate:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks != ",".join(TASKS) else \
            ["teacher", "lsq"]
        seeds = [int(v) for v in args.seeds.split(",")] if args.seeds != "0,1,2" else [1000, 1001]
        if set(seeds) & {0, 1, 2}:
            p.error("--calibrate runs on other seeds than the benchmark's 0, 1, 2")
        calibrate(opts, seeds, names, args.json)
        return 0
    names = ["digits-mlp", "linear"] if args.quick else [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = []
    print(f"{'task':11} {'optimizer':13} {'seed':>4} {'steps':>5} {'grid best lr':>12} {'best loss':>9} "
          f"{'suggested':>9} {'range':>19} {'loss':>8} {'ratio':>6} {'10%':>4} {'s':>5}", flush=True)
    for name in names:
        for label in opts:
            for seed in seeds:
                r = row(name, label, seed, 60 if args.quick else args.steps, floor=args.floor)
                rows.append(r)
                rng = f"{r['low']:.2e}-{r['high']:.2e}" if r["low"] else "-"
                print(f"{name:11} {label:13} {seed:>4} {r['steps']:>5} {r['best_lr']:>12.3g} {r['best_loss']:>9.4f} "
                      f"{r['used_lr']:>9.3g}{'' if r['suggestion'] else '*'} {rng:>19} {r['loss']:>8.4f} {r['ratio']:>6.3f} "
                      f"{'yes' if r['within10'] else 'NO':>4} {r['seconds']:>5.0f}", flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=1, default=str)
    n10, n25 = sum(r["within10"] for r in rows), sum(r["within25"] for r in rows)
    print("* no suggestion (reason in the JSON): the task's default lr was used, as the CLI does")
    print(f"within 10 % (+0.02) of the grid's best: {n10}/{len(rows)} ({n10 / max(len(rows), 1):.0%}); "
          f"within 25 %: {n25}/{len(rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
