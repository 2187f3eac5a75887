"""The commands behind ``descent``: parse inputs, call the library, print tables, write artifacts."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import descent

from . import _progress
from ._args import Failure, UsageError, float_list, writable_dir



def get_task(name: str, seed: int = 0) -> Any:
    """``descent.tasks.get_task`` with unknown names turned into a :class:`UsageError`."""
    from descent.tasks import get_task as _get

    try:
        return _get(name, seed=seed)
    except ImportError as exc:  # a missing optional dependency: the message names the extra
        raise Failure(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print ``payload`` as JSON under ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=_jsonable))
    else:
        print(text)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return repr(v)


def fmt(v: Any, spread: Any = None) -> str:
    """A number as ``mean ± spread`` (4 significant digits), ``-`` for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = f"{v:.4g}"
    return s + (f" ± {spread:.2g}" if spread else "")


def outdir(args: argparse.Namespace) -> Path:
    """``--out``, created and proven writable before any work (else a one-line :class:`Failure`)."""
    return writable_dir(args.out)


PLOT_EXTRA = "plots skipped: matplotlib is not installed (pip install 'descent[plot]')"


def plots_or_note(make: Any) -> tuple[list[Path], str | None]:
    """``(make(), None)``, or ``([], note)`` when matplotlib is missing: the plots need ``descent[plot]``."""
    try:
        return list(make()), None
    except ImportError as exc:
        if "matplotlib" not in str(exc):
            raise
        return [], PLOT_EXTRA


# -------------------------------------------------------------------------------- compare
def parse_lrs(text: str, optimizers: list[str] | None = None) -> dict[str, float]:
    """``sgd=0.05,adamw=1e-3`` as a dict; every value a finite number > 0, every name one of ``optimizers``."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, eq, val = item.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise UsageError(f"Invalid --lrs entry: {item!r} (expected name=value, e.g. adamw=1e-3)")
        if optimizers is not None and name not in optimizers:
            raise UsageError(f"Invalid --lrs entry: {item!r} ({name!r} is not in --optimizers "
                             f"{','.join(optimizers)})")
        out[name] = float_list(val, f"--lrs {name}")[0]
    return out


def run_compare(args: argparse.Namespace, task_name: str, optimizers: list[str], steps: int, seeds: int,
                lrs: dict[str, float]) -> tuple[Any, dict[str, Any], list[dict[str, Any]], list[str]]:
    """Call :func:`descent.tasks.training.compare` with a progress bar; returns (task, results, rows, keys)."""
    from descent.tasks.training import OPTIMIZERS, compare, summarize

    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        raise UsageError(f"Invalid optimizer: {', '.join(bad)} (valid: {', '.join(OPTIMIZERS)})")
    task = get_task(task_name, 0)
    with _progress.bar(args, steps * seeds * len(optimizers), f"compare on {task_name}") as pbar:
        results = compare(task_name, optimizers, steps, seeds, lrs=lrs, callback=lambda n, s, r: pbar.update(1))
    present = {k for runs in results.values() for r in runs for k in r.final}
    keys = [task.metric] + [k for k in ("val_loss", "train_loss", "test_acc", "dist")
                            if k != task.metric and k in present]
    return task, results, summarize(results, keys), keys


def compare_table(task: Any, rows: list[dict[str, Any]], keys: list[str]) -> str:
    head = f"{'optimizer':<10} {'lr':>8} {'seeds':>5} " + " ".join(f"{k:>18}" for k in keys) + f" {'s/run':>6}"
    lines = [head]
    for r in rows:
        if not r["available"]:
            lines.append(f"{r['optimizer']:<10} not available in this build of descent")
            continue
        lines.append(f"{r['optimizer']:<10} {r['lr']:>8.3g} {r['seeds']:>5} "
                     + " ".join(f"{fmt(r[k], r[k + '_std']):>18}" for k in keys) + f" {r['seconds']:>6.1f}")
    better = "higher" if task.higher_is_better else "lower"
    return "\n".join(lines) + f"\n({task.metric}: {better} is better; ± is the sample std over seeds)"


def compare_plots(out: Path, task: Any, results: dict[str, Any]) -> list[Path]:
    from descent.reporting.plotting import band_plot

    plots = [band_plot({n: [r.column("loss") for r in runs] for n, runs in results.items()}, out / "compare_loss.png",
                       title=f"training loss on {task.name} (mean, min-max band over seeds)")]
    return plots


def compare(args: argparse.Namespace) -> int:
    optimizers = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    if not optimizers:
        raise UsageError(f"Invalid --optimizers: {args.optimizers!r} (give comma-separated names)")
    lrs = parse_lrs(args.lrs, optimizers)
    if getattr(args, "tune", 0):
        return compare_tuned(args, optimizers)
    out = outdir(args)
    task, results, rows, keys = run_compare(args, args.task, optimizers, args.steps, args.seeds, lrs)
    plots, note = plots_or_note(lambda: compare_plots(out, task, results)
                                + ([trajectories(out, args.task, optimizers, args.steps, lrs)]
                                   if "fn" in task.extra else []))
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    payload = {"task": args.task, "steps": args.steps, "seeds": args.seeds, "rows": rows, "plots": plots}
    ref = "".join(f"\npublished, {k}: {v}" for k, v in task.reference.items())
    text = (f"{args.task}: {task.description}; {args.steps} steps x {args.seeds} seed(s)\n"
            + compare_table(task, rows, keys) + ref
            + (f"\nplots: {', '.join(str(p) for p in plots)}" if plots else f"\nnote: {note}"))
    payload["reference"] = task.reference
    emit(args, payload, text)
    return 0


def compare_tuned(args: argparse.Namespace, optimizers: list[str]) -> int:
    """``descent compare --tune N``: equal tuning budget, best point on fresh seeds (descent.tasks.tuning)."""
    from descent.tasks import tuning
    from descent.tasks.training import OPTIMIZERS

    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        raise UsageError(f"Invalid --optimizers: {', '.join(bad)} (valid: {', '.join(OPTIMIZERS)})")
    if args.lrs:
        raise UsageError("Invalid --lrs with --tune: the search chooses every lr")
    out = outdir(args)
    every = max(1, args.steps // 10)
    with _progress.bar(args, len(optimizers) * (args.tune + args.seeds), f"tuned compare on {args.task}") as pbar:
        result = tuning.compare_tuned(args.task, optimizers, args.steps, args.tune, args.seeds, every,
                                      log=lambda _line: pbar.update(1))
    target = "adamw" if "adamw" in optimizers else optimizers[0]
    rows = tuning.summarize(result, target_from=target)
    (out / "compare.json").write_text(json.dumps({"rows": rows, "result": result}, indent=1, default=str))
    search = ["", f"search ({args.tune} trials each, seed 0, validation loss):"]
    for name, o in result["optimizers"].items():
        trials = ", ".join(f"lr {t['hp']['lr']:.2g}/wd {t['hp']['weight_decay']:.1g} -> {t['val_loss']:.4f}"
                           for t in o["search"])
        search.append(f"  {name}: {trials}")
    text = (f"{args.task}: {args.steps} steps; best of {args.tune} trials rerun on {args.seeds} fresh seed(s); "
            f"target: {target}'s median final validation loss\n" + tuning.table(args.task, rows) + "\n".join(search))
    emit(args, {"task": args.task, "steps": args.steps, "seeds": args.seeds, "tune": args.tune, "rows": rows}, text)
    return 0


def trajectories(out: Path, task_name: str, optimizers: list[str], steps: int, lrs: dict[str, float]) -> Path:
    """Paths of each optimizer on a 2-D test function, drawn on its contours."""
    from descent.reporting.plotting import trajectory_plot
    from descent.tasks.training import make_optimizer

    task = get_task(task_name)
    paths = {}
    for name in optimizers:
        lr = lrs.get(name, task.lr_for(name))
        model = task.make_model(0)
        opt = make_optimizer(name, model, lr)
        pts = [[float(v) for v in model.xy.detach().reshape(-1)]]
        for step in range(steps):
            opt.zero_grad()
            task.loss(model, task.train.at(step)).backward()
            opt.step()
            pts.append([float(v) for v in model.xy.detach().reshape(-1)])
        paths[f"{name} (lr {lr:g})"] = pts
    return trajectory_plot(task.extra["fn"], paths, out / "trajectories.png", xlim=task.extra["xlim"],
                           ylim=task.extra["ylim"], minima=task.extra["minima"], title=f"{task_name}: paths")
