"""``descent find-lr``, ``lab``, ``doctor``, ``bench`` and ``tasks``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import descent

from . import _progress
from ._args import float_list, int_list
from .commands import Failure, UsageError, emit, fmt, get_task, outdir, plots_or_note


def check_lr_range(start_lr: float, end_lr: float) -> None:
    """A :class:`UsageError` unless ``start_lr < end_lr`` (before any work)."""
    if not start_lr < end_lr:
        raise UsageError(f"Invalid --start-lr/--end-lr: {start_lr:g} >= {end_lr:g} (the sweep goes up: "
                         "--start-lr must be below --end-lr)")


def lr_range_test(task: Any, optimizer: str, start_lr: float, end_lr: float, num_iter: int, seed: int = 0,
                  pbar: Any = None, total_steps: int | None = None) -> Any:
    """:func:`descent.tools.task_lr.find_task_lr` (the one call every command uses) on a fresh model of ``task``.

    ``total_steps`` is the run the suggestion is for (``None``: the range test's own reading);
    ``pbar`` advances per training step.
    """
    from descent.tools.task_lr import find_task_lr

    forward = task.loss if pbar is None else _progress.counting(task.loss, pbar)
    try:
        return find_task_lr(task, optimizer, total_steps, seed=seed, start_lr=start_lr, end_lr=end_lr,
                            num_iter=num_iter, forward=forward)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def auto_lr(task: Any, optimizer: str, steps: int, seed: int = 0) -> tuple[float, str]:
    """``--lr auto``: the suggestion for a run of ``steps`` steps, with the defaults of ``descent find-lr``."""
    from descent.tools.task_lr import END_LR, NUM_ITER, START_LR

    res = lr_range_test(task, optimizer, START_LR, END_LR, NUM_ITER, seed, total_steps=steps)
    if res.suggestion is None:
        raise Failure(f"--lr auto: no suggestion for {optimizer} on {task.name} "
                      f"({res.reason or '; '.join(res.notes)}); pass --lr")
    return float(res.suggestion), (f"lr {res.suggestion:.3g} from descent find-lr --steps {steps} "
                                   f"(range {res.low:.3g}-{res.high:.3g})")


def find_lr(args: argparse.Namespace) -> int:
    from descent.reporting.plotting import lr_finder_plot
    from descent.tools._lr_probe import probe_length

    check_lr_range(args.start_lr, args.end_lr)
    out = outdir(args)
    task = get_task(args.task, args.seed)
    steps = args.steps or None
    with _progress.bar(args, args.num_iter + (10 * probe_length(steps) if steps else 0),
                       f"LR range test on {args.task}") as pbar:
        res = lr_range_test(task, args.optimizer.lower(), args.start_lr, args.end_lr, args.num_iter, args.seed,
                            pbar, total_steps=steps)
    plots, note = plots_or_note(lambda: [lr_finder_plot(res, out / "lr_finder.png")])
    plot = plots[0] if plots else None
    payload = {"task": args.task, "optimizer": args.optimizer, "suggestion": res.suggestion, "method": res.method,
               "suggestions": res.suggestions, "stopped_early": res.stopped_early, "notes": res.notes,
               "plot": plot, "lrs": res.lrs, "losses": res.losses, "low": res.low, "high": res.high,
               "reason": res.reason, "total_steps": res.total_steps,
               "probes": [[lr, v if v != float("inf") else None] for lr, v in res.probes.items()]}
    sugg = fmt(res.suggestion)
    lines = [f"LR range test on {args.task} with {args.optimizer}: {len(res.lrs)} steps "
             f"from {args.start_lr:g} to {max(res.lrs) if res.lrs else args.end_lr:.3g}"
             + (f" (stopped: {res.stopped_early})" if res.stopped_early else ""),
             f"suggested lr: {sugg} (method: {res.method}"
             + (f", for a run of {steps} steps" if steps else "") + ")"
             + (f", range {fmt(res.low)}-{fmt(res.high)}" if res.low is not None else ""),
             *([f"curve unusable: {res.reason}"] if res.reason else []),
             "all methods: " + ", ".join(f"{k}={fmt(v)}" for k, v in res.suggestions.items()),
             *[f"note: {n}" for n in res.notes], f"plot: {plot}" if plot else f"note: {note}"]
    emit(args, payload, "\n".join(lines))
    return 0


def lab(args: argparse.Namespace) -> int:
    from descent.tasks.labs import batch_size_scaling, lr_sensitivity

    out = outdir(args)
    try:
        if args.name == "lr-sensitivity":
            lrs = float_list(args.lrs, "--lrs")
            res = lr_sensitivity(lrs, args.steps, args.seed)
            text = _lr_text(res, out)
        else:
            sizes = int_list(args.batch_sizes, "--batch-sizes")
            with _progress.bar(args, len(sizes) * 3, "batch-size lab") as pbar:
                res = batch_size_scaling(args.task, sizes, args.base_lr, args.epochs, args.seed,
                                         callback=lambda row: pbar.update(1))
            text = _bs_text(res)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    emit(args, res, text)
    return 0


def _lr_text(res: dict[str, Any], out: Path) -> str:
    from descent.reporting.plotting import line_plot

    plots, note = plots_or_note(lambda: [line_plot(
        {f"lr={r['lr']:g}": (list(range(res["steps"])), r["descent"]) for r in res["runs"]},
        out / "lr_sensitivity.png", ylabel="loss", title="SGD(momentum=0.9) at each lr")])
    res["plot"] = plots[0] if plots else None
    lines = [f"5-minute lab: MLP 32-64-10, SGD(momentum=0.9), {res['steps']} steps, random batches (seed 0)"]
    for r in res["runs"]:
        lines.append(f"lr={r['lr']:g} first/last: {r['first']:.4f} {r['last']:.4f}   "
                     f"(descent.SGD vs torch.optim.SGD max |diff| {r['max_abs_diff_vs_torch']:.1e})")
    lines.append("(the data is noise, so the loss cannot fall far: the lab shows how the lr changes the path)")
    return "\n".join(lines + [f"plot: {res['plot']}" if plots else f"note: {note}"])


def _bs_text(res: dict[str, Any]) -> str:
    metric = res["metric"]
    lines = [f"batch-size lab on {res['task']}: SGD-momentum, {res['epochs']} epochs at every batch size, "
             f"base lr {res['base_lr']:g} at the smallest batch",
             f"{'batch':>6} {'rule':>7} {'lr':>9} {'steps':>6} {metric:>9} {'val_loss':>9}"]
    for r in res["rows"]:
        lines.append(f"{r['batch_size']:>6} {r['rule']:>7} {r['lr']:>9.4g} {r['steps']:>6} {fmt(r.get(metric)):>9} "
                     f"{fmt(r.get('val_loss')):>9}")
    return "\n".join(lines)


def doctor(args: argparse.Namespace) -> int:
    from descent.reporting.logs import LogError, read_log

    try:
        cols = read_log(args.log)
    except LogError as exc:
        raise Failure(str(exc)) from None
    fn = getattr(descent, "diagnose", None)
    if fn is None:
        raise Failure("descent.diagnose is not available in this build of descent")
    try:
        found = fn(cols)
    except ValueError as exc:
        raise Failure(f"{args.log}: {exc}") from None
    notes = list(getattr(found, "notes", []))
    payload = {"log": args.log, "steps": len(cols["loss"]), "columns": sorted(cols),
               "findings": [f.to_dict() for f in found], "notes": notes}
    lines = [f"{args.log}: {len(cols['loss'])} steps, columns {', '.join(sorted(cols))}",
             f"{len(found)} finding(s)" + ("" if found else ": nothing wrong detected")]
    for f in found:
        lines += [f"[{f.severity}] {f.code}: {f.message}", f"    evidence: {f.evidence}", f"    fix: {f.fix}"]
    lines += [f"note: {n}" for n in notes]
    emit(args, payload, "\n".join(lines))
    return 0


def bench(args: argparse.Namespace) -> int:
    from descent.reporting import bench as b

    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in ("16M", "gpt20M")]
    if bad or not sets:
        raise UsageError(f"Invalid --sets: {args.sets!r} (comma-separated, from 16M,gpt20M)")
    if args.scale > b.MAX_SCALE:
        raise UsageError(f"Invalid --scale: {args.scale:g} (must be in (0, {b.MAX_SCALE:g}]: 1 is the full "
                         "16M / 20M parameter sets)")
    cases = b.CASES()
    if only:
        names = {c.name.lower() for c in cases}
        unknown = [o for o in only if o.lower() not in names]
        if unknown:
            raise UsageError(f"Invalid optimizer: {', '.join(unknown)} (valid: {', '.join(c.name for c in cases)})")
    total = sum(1 for c in cases if not only or c.name.lower() in {o.lower() for o in only} for _ in sets)
    with _progress.bar(args, total, "bench") as pbar:
        bandwidth, results = b.run(only=only, scale=args.scale, iters=args.iters, sets=sets,
                                   callback=lambda case, set_name: pbar.update(1))
    emit(args, {"bandwidth_gb_s": bandwidth, "scale": args.scale, "results": b.as_dicts(results)},
         b.format_table(bandwidth, results) + f"\n(scale {args.scale:g} of the full 16M / 20M parameter sets)")
    return 0


def tasks(args: argparse.Namespace) -> int:
    from descent.tasks import TASKS
    from descent.tasks.training import OPTIMIZERS

    payload = {"tasks": TASKS, "optimizers": {k: {"description": v} for k, v in OPTIMIZERS.items()}}
    lines = ["tasks:"] + [f"  {k:<12} {v}" for k, v in TASKS.items()] + ["optimizers:"]
    lines += [f"  {k:<12} {v}" for k, v in OPTIMIZERS.items()]
    emit(args, payload, "\n".join(lines))
    return 0
