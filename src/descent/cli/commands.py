"""The commands behind ``descent``: parse inputs, call the library, print tables, write artifacts."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import descent

from . import _progress


class UsageError(Exception):
    """Bad input from the user (exit code 2)."""


class Failure(Exception):
    """The command could not do its job (exit code 1)."""


def get_task(name: str, seed: int = 0) -> Any:
    """``descent.tasks.get_task`` with unknown names turned into a :class:`UsageError`."""
    from descent.tasks import get_task as _get

    try:
        return _get(name, seed=seed)
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
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Failure(f"cannot create --out {out}: {exc}") from None
    return out


# ---------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> int:
    from descent.reporting.plotting import grad_norm_plot, line_plot
    from descent.tasks.training import Unavailable
    from descent.tasks.training import train as run

    task = get_task(args.task, args.seed)
    out = outdir(args)
    if args.resume and not (out / "checkpoint.pt").exists():
        raise Failure(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    monitor_cls = getattr(descent, "Monitor", None)
    if not args.resume:
        (out / "train.jsonl").unlink(missing_ok=True)  # a resumed run appends to its log
    monitor = monitor_cls(jsonl=out / "train.jsonl", clip_max_norm=args.clip) if monitor_cls else None
    with _progress.bar(args, args.steps, f"train {args.task}") as pbar:
        try:
            res = run(task, args.optimizer, args.lr, args.steps, seed=args.seed, clip=args.clip,
                      eval_every=args.eval_every, checkpoint_dir=out, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, recipe=args.recipe, monitor=monitor, stop_at=args.stop_at,
                      callback=_progress.step_callback(pbar, 10))
        except Unavailable as exc:
            raise Failure(str(exc)) from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        finally:
            if monitor is not None:
                monitor.close()
    steps = res.column("step")
    plots = [line_plot({"train loss": (steps, res.column("loss"))}, out / "loss.png", ylabel="loss", logy=True),
             line_plot({"lr": (steps, res.column("lr"))}, out / "lr.png", ylabel="learning rate"),
             grad_norm_plot(steps, res.column("grad_norm"), out / "grad_norm.png", clip=res.clip,
                            clipped=res.column("clipped"))]
    findings = _diagnose(res.history)
    payload = {**res.to_dict(), "checkpoint": out / "checkpoint.pt", "plots": plots,
               "log": (out / "train.jsonl") if monitor else None, "findings": findings["findings"]}
    lines = [f"{res.task}: {res.optimizer} lr={res.lr:g} clip={res.clip} steps={res.steps} ({res.seconds:.1f} s)",
             *[f"  note: {n}" for n in res.notes],
             "  final: " + ", ".join(f"{k}={fmt(v)}" for k, v in res.final.items()),
             f"  checkpoint: {out / 'checkpoint.pt'}", *findings["lines"]]
    emit(args, payload, "\n".join(lines))
    return 0


def _diagnose(history: Any) -> dict[str, Any]:
    fn = getattr(descent, "diagnose", None)
    if fn is None:
        return {"findings": None, "lines": ["  doctor: descent.diagnose is not available in this build"]}
    found = fn(history)
    lines = [f"  doctor: {len(found)} finding(s)"] + [f"    {f}" for f in found]
    lines += [f"    note: {n}" for n in getattr(found, "notes", [])]
    return {"findings": [f.to_dict() for f in found], "notes": list(getattr(found, "notes", [])), "lines": lines}


# -------------------------------------------------------------------------------- compare
def parse_lrs(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, val = item.partition("=")
        try:
            out[name.strip().lower()] = float(val)
        except ValueError:
            raise UsageError(f"Invalid --lrs entry: {item!r} (expected name=value)") from None
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
    if args.steps < 1 or args.seeds < 1:
        raise UsageError(f"Invalid --steps/--seeds: {args.steps}/{args.seeds} (must be >= 1)")
    task, results, rows, keys = run_compare(args, args.task, optimizers, args.steps, args.seeds,
                                            parse_lrs(args.lrs))
    out = outdir(args)
    plots = compare_plots(out, task, results)
    if "fn" in task.extra:
        plots.append(trajectories(out, args.task, optimizers, args.steps, parse_lrs(args.lrs)))
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    payload = {"task": args.task, "steps": args.steps, "seeds": args.seeds, "rows": rows, "plots": plots}
    ref = "".join(f"\npublished, {k}: {v}" for k, v in task.reference.items())
    text = (f"{args.task}: {task.description}; {args.steps} steps x {args.seeds} seed(s)\n"
            + compare_table(task, rows, keys) + ref + f"\nplots: {', '.join(str(p) for p in plots)}")
    payload["reference"] = task.reference
    emit(args, payload, text)
    return 0


def trajectories(out: Path, task_name: str, optimizers: list[str], steps: int, lrs: dict[str, float]) -> Path:
    """Paths of each optimizer on a 2-D test function, drawn on its contours."""
    from descent.reporting.plotting import trajectory_plot
    from descent.tasks.training import Unavailable, make_optimizer

    task = get_task(task_name)
    paths = {}
    for name in optimizers:
        lr = lrs.get(name, task.lr_for(name))
        model = task.make_model(0)
        try:
            opt = make_optimizer(name, model, lr)
        except Unavailable:
            continue
        pts = [[float(v) for v in model.xy.detach().reshape(-1)]]
        for step in range(steps):
            opt.zero_grad()
            task.loss(model, task.train.at(step)).backward()
            opt.step()
            pts.append([float(v) for v in model.xy.detach().reshape(-1)])
        paths[f"{name} (lr {lr:g})"] = pts
    return trajectory_plot(task.extra["fn"], paths, out / "trajectories.png", xlim=task.extra["xlim"],
                           ylim=task.extra["ylim"], minima=task.extra["minima"], title=f"{task_name}: paths")
