"""Train, compare and sweep optimizers on a :class:`~descent.tasks.Task` (the library behind the CLI).

Optimizers are built by name from the registry (:func:`descent.create_optimizer`).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import descent

from ..optim.registry import create_optimizer, list_optimizers, optimizer_info
from ._base import Task

log = logging.getLogger("descent.tasks")

__all__ = ["OPTIMIZERS", "make_optimizer", "RunResult", "train", "prepare", "check_train_args", "compare",
           "summarize"]


def _trainable() -> dict[str, str]:
    """Registry names the built-in training loop can run (everything but closure-driven L-BFGS)."""
    return {n: optimizer_info(n).description for n in list_optimizers(aliases=True)
            if optimizer_info(n).meta.kind != "quasi-newton"}


#: name -> description of every registered optimizer the built-in training loop runs
#: (read from :func:`descent.list_optimizers`; a new optimizer appears here by its declaration).
OPTIMIZERS: dict[str, str] = _trainable()


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name`` (see :data:`OPTIMIZERS`) for ``model``.

    Raises:
        ValueError: unknown name (lists the valid ones).
    """
    key = name.strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (valid: {', '.join(OPTIMIZERS)})")
    return create_optimizer(key, model, lr=lr)


@dataclass
class RunResult:
    """One training run: per-step history, final metrics and what was used."""

    task: str
    optimizer: str
    lr: float
    steps: int
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    clip: float | None = None
    notes: list[str] = field(default_factory=list)
    model: nn.Module | None = None

    def column(self, key: str) -> list[Any]:
        """The values of ``key`` over the history (``None`` where a step lacks it)."""
        return [r.get(key) for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the model)."""
        return {k: getattr(self, k) for k in ("task", "optimizer", "lr", "steps", "seed", "final", "seconds",
                                               "clip", "notes")}


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: float) -> Any:
    sched = descent.schedules.WarmupCosine(max(1, steps), warmup=warmup, min_ratio=0.1)
    return descent.Scheduler(optimizer, sched)


def _record(step: int, loss: float, optimizer: torch.optim.Optimizer, clip: Any, norm: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": step, "loss": loss, "lr": float(optimizer.param_groups[0]["lr"]),
                           "grad_norm": norm}
    rec["clipped"] = bool(clip.clipped) if clip is not None else None
    return rec


def _step(task: Task, model: nn.Module, opt: torch.optim.Optimizer, batch: Any, clip_norm: float | None
          ) -> tuple[float, Any, float]:
    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = task.loss(model, batch)
        out.backward()
        return out
    loss = closure()
    clip = None
    if clip_norm is not None:
        clip = descent.clip_grad_norm_(model.parameters(), clip_norm)
        norm = float(clip.total_norm)
    else:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
            if grads else 0.0
    if isinstance(opt, getattr(descent, "LBFGS", ())) or isinstance(opt, torch.optim.LBFGS):
        opt.step(closure)
    else:
        opt.step()
    return float(loss.detach()), clip, norm



def _evaluate(task: Task, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, float]:
    """The task's metrics at the weights to evaluate: a schedule-free optimizer's average x."""
    schedule_free = "train_mode" in opt.param_groups[0] and callable(getattr(opt, "eval", None))
    if schedule_free and opt.param_groups[0]["train_mode"]:
        opt.eval()
        try:
            return task.evaluate(model)
        finally:
            opt.train()
    return task.evaluate(model)

def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {low})")


def _check_positive(name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number > 0)")


def check_train_args(steps: int, lr: float | None, clip: float | None, seed: int, eval_every: int,
                     checkpoint_every: int, stop_at: int | None, warmup: float = 0.0) -> None:
    """Raise ``ValueError`` naming the first bad argument of :func:`train` (before any work)."""
    _check_int("steps", steps, 1)
    _check_positive("lr", lr)
    _check_positive("clip", clip)
    _check_int("seed", seed, 0)
    _check_int("eval_every", eval_every, 0)
    _check_int("checkpoint_every", checkpoint_every, 0)
    _check_int("stop_at", stop_at, 0, allow_none=True)
    if not (isinstance(warmup, (int, float)) and 0.0 <= warmup < 1.0):
        raise ValueError(f"Invalid warmup: {warmup!r} (must be a fraction in [0, 1))")


def train(task: Task, optimizer: str = "adamw", lr: float | None = None, steps: int = 200, *,
          seed: int = 0, clip: float | None = None, warmup: float = 0.0, schedule: bool = True,
          eval_every: int = 0, monitor: Any = None, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 0, resume: bool = False, stop_at: int | None = None,
          callback: Callable[[dict[str, Any]], None] | None = None, recipe: str | None = None,
          keep_checkpoints: int = 3) -> RunResult:
    """Train a fresh seeded model of ``task`` with descent's ``optimizer`` for ``steps`` steps.

    Each step: loss on ``task.train.at(step)``, backward, optional clipping (``clip`` = max norm,
    :func:`descent.clip_grad_norm_`), optimizer step, warmup-cosine schedule step. The history has
    ``loss``, ``lr``, ``grad_norm``, ``clipped`` per step and ``val_*`` metrics every ``eval_every``
    steps (and at the end). With ``checkpoint_dir``, :func:`descent.checkpoint.save` writes
    model/optimizer/scheduler/monitor/RNG/history there every ``checkpoint_every`` steps and at
    the end (atomically, the newest ``keep_checkpoints`` kept); ``resume`` continues from the
    newest readable one exactly (batches are a function of the step). A resumed run given an
    ``lr`` other than the checkpoint's rescales every group's lr and the schedule's base values
    by the ratio. ``stop_at`` ends early (to test resume). Arguments are checked before any work.

    Args:
        monitor: an object with ``log(step, loss=..., model=..., optimizer=..., clip=..., **metrics)``
            (e.g. :class:`descent.Monitor`), called every step.
        callback: called with each step's record (progress bars).
        recipe: a :func:`descent.recipe` scenario: its optimizer, scheduler and clipping norm replace
            ``optimizer``/``schedule``/``clip`` (``lr`` still overrides the recipe's lr when given).

    Raises:
        ValueError: a bad argument (named in the message).
        descent.checkpoint.CheckpointError: ``resume`` without a usable checkpoint, or one of another run.
    """
    check_train_args(steps, lr, clip, seed, eval_every, checkpoint_every, stop_at, warmup)
    model = task.make_model(seed)
    res = RunResult(task.name, optimizer, 0.0, steps, seed, model=model)
    opt, sched, clip = _setup(task, model, res, optimizer, lr, steps, recipe, clip, schedule, warmup)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    mon = monitor if isinstance(monitor, getattr(descent, "Monitor", ())) else None
    start = _resume(ckdir, model, opt, sched, mon, res) if resume else 0
    t0 = time.perf_counter()
    end = steps if stop_at is None else min(steps, stop_at)
    for step in range(start, end):
        loss, clip_res, norm = _step(task, model, opt, task.train.at(step), clip)
        rec = _record(step, loss, opt, clip_res, norm)
        if (eval_every and (step + 1) % eval_every == 0) or step == steps - 1:
            rec.update(_evaluate(task, model, opt))
        if monitor is not None:
            monitor.log(step, loss=loss, model=model, optimizer=opt, clip=clip_res,
                        **{k: v for k, v in rec.items() if k.startswith("val_")})
        if sched is not None:
            _sched_step(sched, rec)
        opt.zero_grad(set_to_none=True)
        res.history.append(rec)
        if callback is not None:
            callback(rec)
        if ckdir is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or step == end - 1):
            descent.checkpoint.save(ckdir, step=step + 1, model=model, optimizer=opt, scheduler=sched,
                                    monitor=mon, keep=keep_checkpoints,
                                    extra={"history": res.history, "lr": res.lr, "task": task.name})
    res.seconds = time.perf_counter() - t0
    res.final = _evaluate(task, model, opt)
    res.final["train_loss"] = _tail_mean(res.column("loss"))
    return res


def prepare(task: Task, optimizer: str = "adamw", lr: float | None = None, steps: int = 200, *, seed: int = 0,
            clip: float | None = None, recipe: str | None = None, warmup: float = 0.0,
            schedule: bool = True) -> RunResult:
    """Check the arguments of :func:`train` and resolve what the run would use, without training.

    Builds the seeded model and the optimizer (or recipe) once, so a bad optimizer or recipe
    name fails here, before a caller touches any files. The result has ``lr``, ``optimizer``,
    ``clip`` and ``notes`` as :func:`train` would report them.

    Example:
        >>> from descent.tasks import get_task
        >>> prepare(get_task("linear"), "sgd", steps=10).lr > 0
        True
    """
    check_train_args(steps, lr, clip, seed, 0, 0, None, warmup)
    model = task.make_model(seed)
    res = RunResult(task.name, optimizer, 0.0, steps, seed)
    _setup(task, model, res, optimizer, lr, steps, recipe, clip, schedule, warmup)
    return res


def _resume(ckdir: Path | None, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, monitor: Any,
            res: RunResult) -> int:
    """Load the newest readable checkpoint of ``ckdir``; returns its step."""
    if ckdir is None:
        raise descent.checkpoint.CheckpointError("resume needs a checkpoint_dir")
    ck = descent.checkpoint.load(ckdir, model=model, optimizer=opt, scheduler=sched, monitor=monitor)
    res.history = list(ck.extra.get("history", []))
    saved_lr = ck.extra.get("lr")
    if saved_lr and res.lr and res.lr != saved_lr:
        _rescale_lr(opt, sched, res.lr / saved_lr)
        res.notes.append(f"lr changed on resume: {saved_lr:g} -> {res.lr:g} (every group and the schedule scaled)")
    res.notes.append(f"resumed from step {ck.step} ({ck.path.name})")
    return ck.step


def _rescale_lr(opt: torch.optim.Optimizer, sched: Any, factor: float) -> None:
    for group in opt.param_groups:
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
    for attr in ("base_values", "base_lrs"):
        if sched is not None and isinstance(getattr(sched, attr, None), list):
            setattr(sched, attr, [None if v is None else v * factor for v in getattr(sched, attr)])


def _setup(task: Task, model: nn.Module, res: RunResult, optimizer: str, lr: float | None, steps: int,
           recipe: str | None, clip: float | None, schedule: bool, warmup: float) -> tuple[Any, Any, float | None]:
    if recipe is not None:
        make = descent.recipe
        # an explicit lr was chosen at this batch size already: no batch-size rescaling on top
        bs = getattr(task.train, "batch_size", None) if lr is None else None
        rec = make(recipe, model, steps, batch_size=bs, lr=lr)
        res.optimizer, res.lr = f"{type(rec.optimizer).__name__} (recipe {recipe})", float(rec.lr)
        res.clip = rec.clip_norm if clip is None else clip
        res.notes += [f"recipe {what}: {choice}" for what, choice, _src in rec.explanations]
        if lr is not None:
            res.notes.append(f"lr {float(lr):g} as given (in place of the recipe's lr)")
        if clip is not None and clip != rec.clip_norm:
            res.notes.append(f"clip {clip:g} as given (the recipe's: {rec.clip_norm})")
        return rec.optimizer, rec.scheduler, res.clip
    res.lr = task.lr_for(optimizer) if lr is None else float(lr)
    opt = make_optimizer(optimizer, model, res.lr)
    res.clip = clip
    return opt, (_schedule(opt, steps, warmup) if schedule else None), clip


def _sched_step(sched: Any, rec: dict[str, Any]) -> None:
    if "Plateau" in type(sched).__name__:  # metric-driven: step on each evaluation only
        if rec.get("val_loss") is not None:
            sched.step(rec["val_loss"])
    else:
        sched.step()


def _tail_mean(values: Sequence[Any], frac: float = 0.1) -> float:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return math.nan
    k = max(1, int(len(xs) * frac))
    return sum(xs[-k:]) / k


def compare(task_name: str, optimizers: Sequence[str], steps: int = 200, seeds: int = 1, *,
            lrs: dict[str, float] | None = None, eval_every: int = 0, task_options: dict[str, Any] | None = None,
            callback: Callable[[str, int, dict[str, Any]], None] | None = None) -> dict[str, list[RunResult]]:
    """The same budget for every optimizer over ``seeds`` seeds (tasks rebuilt per seed)."""
    from . import get_task

    for name in optimizers:  # validate names before any work
        if name.strip().lower() not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizer: {name!r} (valid: {', '.join(OPTIMIZERS)})")
    out: dict[str, list[RunResult]] = {o: [] for o in optimizers}
    for seed in range(seeds):
        task = get_task(task_name, seed=seed, **(task_options or {}))
        for name in optimizers:
            cb = (lambda rec, n=name, s=seed: callback(n, s, rec)) if callback else None
            out[name].append(train(task, name, (lrs or {}).get(name), steps, seed=seed, eval_every=eval_every,
                                   callback=cb))
    return out


def summarize(results: dict[str, list[RunResult]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Per optimizer: mean and spread (sample std; 0 for one seed) of each final metric in ``keys``."""
    rows = []
    for name, runs in results.items():
        row: dict[str, Any] = {"optimizer": name, "available": bool(runs), "seeds": len(runs),
                               "lr": runs[0].lr if runs else None}
        for key in keys:
            vals = [r.final[key] for r in runs if key in r.final and r.final[key] == r.final[key]]
            row[key] = statistics.fmean(vals) if vals else None
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
        row["seconds"] = statistics.fmean([r.seconds for r in runs]) if runs else None
        rows.append(row)
    return rows
