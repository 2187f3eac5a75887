"""``descent demo``: LR range test -> recipe-configured monitored run + doctor -> comparison -> report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import descent

from . import _progress
from .commands import (compare_plots, compare_table, emit, fmt, get_task, outdir, plots_or_note, run_compare,
                       trajectories)
from .report import table_html, write_report
from .tools import lr_range_test

DEMO_OPTIMIZERS = ["sgd", "adamw", "lion", "muon"]


def _say(args: argparse.Namespace, msg: str) -> None:
    if not (args.quiet or args.json):
        print(msg, flush=True)


def _find_lr(args: argparse.Namespace, task: Any, out: Path, steps: int) -> tuple[float, str, list[Path]]:
    if getattr(descent, "find_lr", None) is None:
        return task.lr_for("adamw"), "descent.find_lr not available: task default lr used", []
    from descent.reporting.plotting import lr_finder_plot
    from descent.tools._lr_probe import probe_length
    from descent.tools.task_lr import END_LR, NUM_ITER, START_LR

    # the same call and defaults as `descent find-lr --optimizer adamw --steps <steps>`
    with _progress.bar(args, NUM_ITER + 10 * probe_length(steps), "LR range test") as pbar:
        res = lr_range_test(task, "adamw", START_LR, END_LR, NUM_ITER, args.seed, pbar, total_steps=steps)
    plots, note = plots_or_note(lambda: [lr_finder_plot(res, out / "lr_finder.png", title="LR range test (AdamW)")])
    extra = f"; {note}" if note else ""
    if res.suggestion is None:
        return task.lr_for("adamw"), f"no suggestion ({'; '.join(res.notes)}): task default lr used{extra}", plots
    return float(res.suggestion), (f"suggested {res.suggestion:.3g} by {res.method} for a run of {steps} steps "
                                   f"(range {res.low:.3g}-{res.high:.3g}){extra}"), plots


def _monitored(args: argparse.Namespace, task: Any, out: Path, lr: float, steps: int) -> tuple[Any, Any, list[Path]]:
    from descent.reporting.plotting import grad_norm_plot, line_plot
    from descent.tasks.training import train

    mon_cls = getattr(descent, "Monitor", None)
    clip = 1.0
    jsonl = out / "train.jsonl"
    jsonl.unlink(missing_ok=True)
    monitor = mon_cls(jsonl=jsonl, clip_max_norm=clip) if mon_cls else None
    recipe = task.recipe if getattr(descent, "recipe", None) else None
    with _progress.bar(args, steps, "monitored run") as pbar:
        res = train(task, "adamw", lr, steps, seed=args.seed, clip=clip, recipe=recipe, warmup=0.05,
                    eval_every=max(1, steps // 10), monitor=monitor, callback=_progress.step_callback(pbar, 10))
    if monitor is not None:
        monitor.close()
    else:
        res.notes.append("descent.Monitor not available: the run's own records are used")
    steps_ = res.column("step")
    val = [(r["step"], r["val_loss"]) for r in res.history if "val_loss" in r]
    plots, note = plots_or_note(lambda: [
        line_plot({"train loss": (steps_, res.column("loss")), "val loss": tuple(zip(*val)) if val else ([], [])},
                  out / "train_loss.png", ylabel="loss", logy=True, title=f"{res.optimizer} on {task.name}"),
        line_plot({"lr": (steps_, res.column("lr"))}, out / "lr.png", ylabel="learning rate",
                  title="learning rate schedule"),
        grad_norm_plot(steps_, res.column("grad_norm"), out / "grad_norm.png", clip=res.clip,
                       clipped=res.column("clipped"), title="global gradient norm and clip threshold")])
    if note:
        res.notes.append(note)
    diag = getattr(descent, "diagnose", None)
    found = diag(monitor if monitor is not None else res.history) if diag else None
    return res, found, plots


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = outdir(args)
    task = get_task(args.task, args.seed)
    steps = min(30, args.steps) if args.quick else args.steps
    _say(args, f"descent demo on {task.name}: {task.description}")
    _say(args, "[1/3] LR range test (AdamW)")
    lr, lr_note, lr_plots = _find_lr(args, task, out, steps)
    _say(args, f"      {lr_note}")
    _say(args, f"[2/3] monitored run: recipe '{task.recipe}', lr {lr:.3g}, clip 1.0, {steps} steps")
    res, found, run_plots = _monitored(args, task, out, lr, steps)
    _say(args, f"      {res.optimizer}, lr {res.lr:.3g}, {res.seconds:.1f} s")
    _say(args, "      final: " + ", ".join(f"{k}={fmt(v)}" for k, v in res.final.items()))
    doc_lines = ["descent.diagnose not available in this build"] if found is None else (
        [str(f) for f in found] or ["no problem found"]) + [f"note: {n}" for n in getattr(found, "notes", [])]
    for line in doc_lines:
        _say(args, f"      doctor: {line}")
    _say(args, f"[3/3] comparison: {', '.join(DEMO_OPTIMIZERS)}, {steps} steps each")
    task_c, results, rows, keys = run_compare(args, task.name, DEMO_OPTIMIZERS, steps, 1, {})
    table = compare_table(task_c, rows, keys)
    cmp_plots, _ = plots_or_note(lambda: compare_plots(out, task_c, results) + [
        trajectories(out, "rosenbrock", ["sgd", "adam", "lion"], steps if args.quick else 300, {})])
    report = write_report(out, f"descent demo: {task.name}", [
        ("1. LR range test (AdamW)", f"<p>{lr_note}</p>", lr_plots),
        ("2. Monitored run", f"<p>{res.optimizer}, lr {res.lr:.3g}, clip {res.clip}, {steps} steps, "
         f"{res.seconds:.1f} s</p><ul>" + "".join(f"<li>{n}</li>" for n in res.notes) + "</ul>"
         + table_html([res.final], list(res.final)) + "<h3>Doctor</h3><ul>"
         + "".join(f"<li>{line}</li>" for line in doc_lines) + "</ul>", run_plots),
        ("3. Optimizer comparison", table_html(rows, ["optimizer", "lr", *keys, "seconds"]), cmp_plots)])
    elapsed = time.perf_counter() - t0
    payload = {"task": task.name, "lr": lr, "lr_note": lr_note, "run": res.to_dict(),
               "findings": [f.to_dict() for f in found] if found is not None else None,
               "compare": rows, "report": report, "plots": lr_plots + run_plots + cmp_plots, "seconds": elapsed}
    emit(args, payload, f"\nsummary ({task.name}, {steps} steps per run):\n{table}\n"
                        f"report: {report}  ({elapsed:.0f} s)")
    return 0
