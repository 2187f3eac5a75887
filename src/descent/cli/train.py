"""``descent train``: one monitored run in a crash-safe run folder.

A run folder holds ``run.json`` (the run's configuration), ``checkpoints/ckpt-<step>.pt``
(written by :func:`descent.checkpoint.save`: atomic, the newest three kept), ``train.jsonl``
(the monitor's log, append-only) and the plots. A new run refuses a folder that holds one
unless ``--resume`` or ``--overwrite`` is given; ``--resume`` refuses settings that change the
run unless ``--allow-changes`` is given, and says what it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import descent

from . import _progress
from ._args import Failure, UsageError, writable_dir
from .commands import emit, fmt, get_task, plots_or_note

RUN_FILE, CKPT_DIR, LOG_FILE = "run.json", "checkpoints", "train.jsonl"
#: Where ``--overwrite`` keeps the replaced run until the new run has written a checkpoint.
REPLACED_DIR = ".replaced"
#: Settings that define a run, with their defaults for a new run.
DEFINING = {"task": "digits-mlp", "optimizer": "adamw", "recipe": None, "seed": 0, "lr": None, "steps": 300,
            "clip": None}
#: Defining settings a resumed run can change with --allow-changes (the state still fits).
CHANGEABLE = ("lr", "steps", "clip")


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run: a configuration, a checkpoint or a non-empty log."""
    log = out / LOG_FILE
    return ((out / RUN_FILE).exists() or bool(descent.checkpoint.list_checkpoints(out / CKPT_DIR))
            or (log.exists() and log.stat().st_size > 0))


def read_config(out: Path) -> dict[str, Any]:
    """``out/run.json`` as a dict (``{}`` if the folder has none)."""
    path = out / RUN_FILE
    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read the run configuration {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise Failure(f"cannot read the run configuration {path}: not a JSON object")
    return cfg


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON through a temporary file, fsync and rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _differences(args: argparse.Namespace, cfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out = []
    for k in DEFINING:
        new, old = getattr(args, k), cfg.get(k)
        if old is None:
            old = cfg.get(f"resolved_{k}")  # e.g. the task's default lr the run used
        if new is not None and k in cfg and new != old:
            out.append((k, old, new))
    return out


def resolve(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Decide new run / resume / overwrite and fill unset settings; raises on refused combinations."""
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    has = holds_run(out)
    if args.resume:
        if not descent.checkpoint.list_checkpoints(out / CKPT_DIR):
            raise Failure(f"--resume: no checkpoint in {out / CKPT_DIR} (nothing to resume; run without --resume)")
        cfg = read_config(out)
        changed = _differences(args, cfg)
        fixed = [c for c in changed if c[0] not in CHANGEABLE]
        if fixed or (changed and not args.allow_changes):
            what = ", ".join(f"--{k.replace('_', '-')} {new} (the run has {old})" for k, old, new in changed)
            hint = ("start a new run with another --out or --overwrite" if fixed else
                    "pass --allow-changes to continue with the new values, or leave them out")
            raise UsageError(f"--resume with changed settings: {what}; {hint}")
        for k, default in DEFINING.items():
            if getattr(args, k) is None:
                setattr(args, k, cfg.get(k, default))
        return cfg
    if has and not args.overwrite:
        cfg = read_config(out)
        ck = descent.checkpoint.latest(out / CKPT_DIR)
        desc = f"{cfg.get('task', '?')}, {cfg.get('optimizer', '?')}" if cfg else "an earlier run"
        at = f", checkpoint at step {int(ck.stem.split('-')[1])}" if ck else ""
        raise UsageError(f"{out} already holds a run ({desc}{at}): pass --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    for k, default in DEFINING.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    return {}


def _set_aside(out: Path) -> Path:
    """Move an earlier run's files into ``out/.replaced`` (``--overwrite``, after every check has passed).

    Nothing is deleted yet: :func:`_drop_replaced` removes the folder once the new run has
    written a checkpoint, so a new run that fails at once leaves the old one recoverable.
    A ``.replaced`` folder left by an earlier failed overwrite is kept when the folder holds
    no newer checkpoint (the run in it is still the last one saved).
    """
    import shutil

    aside = out / REPLACED_DIR
    if aside.exists():
        if not descent.checkpoint.list_checkpoints(out / CKPT_DIR):
            for name in (LOG_FILE, RUN_FILE):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
            return aside
        shutil.rmtree(aside)
    aside.mkdir()
    for name in (CKPT_DIR, LOG_FILE, RUN_FILE):
        if (out / name).exists():
            os.replace(out / name, aside / name)
    return aside


def _drop_replaced(out: Path) -> None:
    """Delete the run ``--overwrite`` set aside, once the new run has a checkpoint of its own."""
    import shutil

    if (out / REPLACED_DIR).exists() and descent.checkpoint.list_checkpoints(out / CKPT_DIR):
        shutil.rmtree(out / REPLACED_DIR, ignore_errors=True)


def truncate_log(path: Path, step: int) -> int:
    """Cut ``path`` before its first record with ``step >= step`` (or a partial last line).

    Records after the checkpoint being resumed were written by the interrupted process; the
    resumed run writes them again, so the log stays one record per step. Returns how many
    records were dropped.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep, dropped, pos = 0, 0, 0
    for line in data.splitlines(keepends=True):
        end = pos + len(line)
        try:
            rec = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or rec["step"] >= step:
            dropped += 1
        elif dropped == 0:
            keep = end
        pos = end
    if keep < len(data):
        os.truncate(path, keep)
    return dropped


def _peek(ckdir: Path) -> Any:
    """The checkpoint a resume will use (its warnings come again from the real load, once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return descent.checkpoint.load(ckdir, rng=False)
        except descent.checkpoint.CheckpointError as exc:
            raise Failure(str(exc)) from None


def _config(args: argparse.Namespace, res: Any) -> dict[str, Any]:
    cfg = {k: getattr(args, k) for k in DEFINING}
    cfg.update(resolved_lr=res.lr, resolved_clip=res.clip, resolved_optimizer=res.optimizer, eval_every=args.eval_every,
               checkpoint_every=args.checkpoint_every, descent_version=descent.__version__)
    return cfg


def train(args: argparse.Namespace) -> int:
    from descent.tasks.training import prepare
    from descent.tasks.training import train as run

    out = writable_dir(args.out)
    auto = args.lr == "auto"
    if auto:
        args.lr = None  # a resumed run keeps the lr it was started with
    cfg = resolve(args, out)
    task = get_task(args.task, args.seed)
    if auto and not args.resume:
        if args.recipe:
            raise UsageError("--lr auto with --recipe: pass --optimizer instead, or a number for --lr")
        from .tools import auto_lr

        args.lr, note = auto_lr(task, args.optimizer, args.steps, args.seed)
        if _progress.says(args):
            print(f"--lr auto: {note}", flush=True)
    try:
        planned = prepare(task, args.optimizer, args.lr, args.steps, seed=args.seed, clip=args.clip,
                          recipe=args.recipe)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    resumed = None
    if args.resume:
        ck = _peek(out / CKPT_DIR)
        dropped = truncate_log(out / LOG_FILE, ck.step)
        state = (f"resuming {out} at step {ck.step} of {args.steps} from {ck.path.relative_to(out)}: "
                 f"{args.task}, {planned.optimizer} lr={planned.lr:g}, seed {args.seed}")
        if dropped:
            state += f"; {dropped} log record(s) after step {ck.step} dropped (they are redone)"
        if _progress.says(args):
            print(state, flush=True)
        resumed = state
    elif args.overwrite:
        aside = _set_aside(out)
        if _progress.says(args):
            print(f"--overwrite: the earlier run is kept in {aside} until this run writes a checkpoint", flush=True)
    write_json_atomic(out / RUN_FILE, {**cfg, **_config(args, planned)})
    monitor = descent.Monitor(jsonl=out / LOG_FILE, clip_max_norm=args.clip)
    with _progress.bar(args, args.steps, f"train {args.task}") as pbar:
        try:
            res = run(task, args.optimizer, args.lr, args.steps, seed=args.seed, clip=args.clip,
                      eval_every=args.eval_every, checkpoint_dir=out / CKPT_DIR,
                      checkpoint_every=args.checkpoint_every, resume=args.resume, recipe=args.recipe,
                      monitor=monitor, stop_at=args.stop_at, callback=_progress.step_callback(pbar, 10),
                      keep_checkpoints=args.keep)
        except descent.checkpoint.CheckpointError as exc:
            raise Failure(str(exc)) from None
        finally:
            monitor.close()
            _drop_replaced(out)
    return _report(args, out, res, resumed)


def _report(args: argparse.Namespace, out: Path, res: Any, resumed: str | None) -> int:
    from descent.reporting.plotting import grad_norm_plot, line_plot

    steps = res.column("step")
    plots, note = plots_or_note(lambda: [
        line_plot({"train loss": (steps, res.column("loss"))}, out / "loss.png", ylabel="loss", logy=True),
        line_plot({"lr": (steps, res.column("lr"))}, out / "lr.png", ylabel="learning rate"),
        grad_norm_plot(steps, res.column("grad_norm"), out / "grad_norm.png", clip=res.clip,
                       clipped=res.column("clipped"))])
    findings = _diagnose(res.history)
    ckpt = descent.checkpoint.latest(out / CKPT_DIR)
    payload = {**res.to_dict(), "checkpoint": ckpt, "plots": plots, "log": out / LOG_FILE,
               "config": out / RUN_FILE, "resumed": resumed, "findings": findings["findings"]}
    done = len(res.history)
    lines = [f"{res.task}: {res.optimizer} lr={res.lr:g} clip={res.clip} steps={done} of {res.steps} "
             f"({res.seconds:.1f} s)", *[f"  note: {n}" for n in res.notes],
             *([f"  note: {note}"] if note else []),
             "  final: " + ", ".join(f"{k}={fmt(v)}" for k, v in res.final.items()),
             f"  checkpoint: {ckpt}", f"  log: {out / LOG_FILE}", *findings["lines"]]
    if done < res.steps:
        lines.append(f"  stopped at step {done}: continue with the same command and --resume")
    emit(args, payload, "\n".join(lines))
    cfg = read_config(out)
    write_json_atomic(out / RUN_FILE, {**cfg, "completed_steps": done})
    return 0


def _diagnose(history: Any) -> dict[str, Any]:
    found = descent.diagnose(history)
    lines = [f"  doctor: {len(found)} finding(s)"] + [f"    {f}" for f in found]
    lines += [f"    note: {n}" for n in getattr(found, "notes", [])]
    return {"findings": [f.to_dict() for f in found], "notes": list(getattr(found, "notes", [])), "lines": lines}
