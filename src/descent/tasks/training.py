"""Train, compare and sweep optimizers on a :class:`~descent.tasks.Task` (the library behind the CLI).

Optional pieces of descent (``Lion``, ``Monitor``, ``recipe``, ...) are looked up at run time; a
missing one raises :class:`Unavailable` or is reported in ``RunResult.notes``, never faked.
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

from ._base import Task

log = logging.getLogger("descent.tasks")

__all__ = ["OPTIMIZERS", "Unavailable", "make_optimizer", "RunResult", "train", "compare", "summarize"]


class Unavailable(ValueError):
    """An optimizer or tool that this build of descent does not provide."""


def _groups(model: nn.Module, wd: float) -> Any:
    return descent.param_groups(model, weight_decay=wd)


#: name -> (descent class name, builder(cls, model, lr) -> optimizer, description)
OPTIMIZERS: dict[str, tuple[str, Callable[..., torch.optim.Optimizer], str]] = {
    "sgd": ("SGD", lambda c, m, lr: c(_groups(m, 5e-4), lr=lr, momentum=0.9, nesterov=True),
            "SGD, Nesterov momentum 0.9, wd 5e-4"),
    "sgd-plain": ("SGD", lambda c, m, lr: c(m.parameters(), lr=lr), "plain SGD"),
    "adam": ("Adam", lambda c, m, lr: c(m.parameters(), lr=lr), "Adam"),
    "adamw": ("AdamW", lambda c, m, lr: c(_groups(m, 0.01), lr=lr), "AdamW, wd 0.01 off bias/norm"),
    "rmsprop": ("RMSprop", lambda c, m, lr: c(m.parameters(), lr=lr), "RMSprop"),
    "adagrad": ("Adagrad", lambda c, m, lr: c(m.parameters(), lr=lr), "Adagrad"),
    "lion": ("Lion", lambda c, m, lr: c(_groups(m, 0.1), lr=lr), "Lion, wd 0.1 off bias/norm"),
    "lamb": ("LAMB", lambda c, m, lr: c(_groups(m, 0.01), lr=lr), "LAMB, wd 0.01"),
    "adafactor": ("Adafactor", lambda c, m, lr: c(m.parameters(), lr=lr), "Adafactor"),
    "sophiag": ("SophiaG", lambda c, m, lr: c(m.parameters(), lr=lr), "SophiaG"),
    "muon": ("Muon", lambda c, m, lr: c(m, lr=lr, adamw_lr=3e-3), "Muon on matrices, AdamW 3e-3 on the rest"),
    "shampoo": ("Shampoo", lambda c, m, lr: c(m.parameters(), lr=lr), "Shampoo"),
    "kfac": ("KFAC", lambda c, m, lr: c(m, lr=lr), "K-FAC"),
}


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Build descent's optimizer ``name`` (see :data:`OPTIMIZERS`) for ``model``.

    Raises:
        ValueError: unknown name (lists the valid ones); :class:`Unavailable` if descent lacks it.
    """
    key = name.strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (valid: {', '.join(OPTIMIZERS)})")
    attr, build, _ = OPTIMIZERS[key]
    cls = getattr(descent, attr, None)
    if cls is None:
        raise Unavailable(f"optimizer {key!r} is not available in this build of descent (no descent.{attr})")
    return build(cls, model, lr)


def available_optimizers() -> list[str]:
    """The names in :data:`OPTIMIZERS` whose class this build of descent provides."""
    return [k for k, (attr, _, _) in OPTIMIZERS.items() if hasattr(descent, attr)]


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


def train(task: Task, optimizer: str = "adamw", lr: float | None = None, steps: int = 200, *,
          seed: int = 0, clip: float | None = None, warmup: float = 0.0, schedule: bool = True,
          eval_every: int = 0, monitor: Any = None, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 0, resume: bool = False, stop_at: int | None = None,
          callback: Callable[[dict[str, Any]], None] | None = None, recipe: str | None = None) -> RunResult:
    """Train a fresh seeded model of ``task`` with descent's ``optimizer`` for ``steps`` steps.

    Each step: loss on ``task.train.at(step)``, backward, optional clipping (``clip`` = max norm,
    :func:`descent.clip_grad_norm_`), optimizer step, warmup-cosine schedule step. The history has
    ``loss``, ``lr``, ``grad_norm``, ``clipped`` per step and ``val_*`` metrics every ``eval_every``
    steps (and at the end). With ``checkpoint_dir``, model/optimizer/scheduler/history are saved
    every ``checkpoint_every`` steps and at the end; ``resume`` continues from the last checkpoint
    exactly (batches are a function of the step). ``stop_at`` ends early (to test resume).

    Args:
        monitor: an object with ``log(step, loss=..., model=..., optimizer=..., clip=..., **metrics)``
            (e.g. :class:`descent.Monitor`), called every step.
        callback: called with each step's record (progress bars).
        recipe: a :func:`descent.recipe` scenario: its optimizer, scheduler and clipping norm replace
            ``optimizer``/``schedule``/``clip`` (``lr`` still overrides the recipe's lr when given).
    """
    model = task.make_model(seed)
    res = RunResult(task.name, optimizer, 0.0, steps, seed, model=model)
    opt, sched, clip = _setup(task, model, res, optimizer, lr, steps, recipe, clip, schedule, warmup)
    start = 0
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"no checkpoint to resume from at {ckpt}")
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        start, res.history = int(state["step"]), list(state["history"])
        res.notes.append(f"resumed from step {start}")
    t0 = time.perf_counter()
    end = steps if stop_at is None else min(steps, stop_at)
    for step in range(start, end):
        loss, clip_res, norm = _step(task, model, opt, task.train.at(step), clip)
        rec = _record(step, loss, opt, clip_res, norm)
        if (eval_every and (step + 1) % eval_every == 0) or step == steps - 1:
            rec.update(task.evaluate(model))
        if monitor is not None:
            monitor.log(step, loss=loss, model=model, optimizer=opt, clip=clip_res,
                        **{k: v for k, v in rec.items() if k.startswith("val_")})
        if sched is not None:
            _sched_step(sched, rec)
        opt.zero_grad(set_to_none=True)
        res.history.append(rec)
        if callback is not None:
            callback(rec)
        if ckpt is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or step == end - 1):
            _save(ckpt, model, opt, sched, step + 1, res.history)
    res.seconds = time.perf_counter() - t0
    res.final = task.evaluate(model)
    res.final["train_loss"] = _tail_mean(res.column("loss"))
    return res


def _setup(task: Task, model: nn.Module, res: RunResult, optimizer: str, lr: float | None, steps: int,
           recipe: str | None, clip: float | None, schedule: bool, warmup: float) -> tuple[Any, Any, float | None]:
    if recipe is not None:
        make = getattr(descent, "recipe", None)
        if make is None:
            raise Unavailable("descent.recipe is not available in this build of descent")
        # an explicit lr was chosen at this batch size already: no batch-size rescaling on top
        bs = getattr(task.train, "batch_size", None) if lr is None else None
        rec = make(recipe, model, steps, batch_size=bs, lr=lr)
        res.optimizer, res.lr = f"{type(rec.optimizer).__name__} (recipe {recipe})", float(rec.lr)
        res.clip = rec.clip_norm if clip is None else clip
        res.notes += [f"{what}: {choice} [{src}]" for what, choice, src in rec.explanations]
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


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, step: int,
          history: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "step": step,
                "history": history}, tmp)
    tmp.replace(path)


def compare(task_name: str, optimizers: Sequence[str], steps: int = 200, seeds: int = 1, *,
            lrs: dict[str, float] | None = None, eval_every: int = 0, task_options: dict[str, Any] | None = None,
            callback: Callable[[str, int, dict[str, Any]], None] | None = None) -> dict[str, list[RunResult]]:
    """The same budget for every optimizer over ``seeds`` seeds (tasks rebuilt per seed).

    Unavailable optimizers are skipped with a logged warning (their list entry is empty).
    """
    from . import get_task

    for name in optimizers:  # validate names before any work
        if name.strip().lower() not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizer: {name!r} (valid: {', '.join(OPTIMIZERS)})")
    out: dict[str, list[RunResult]] = {o: [] for o in optimizers}
    for seed in range(seeds):
        task = get_task(task_name, seed=seed, **(task_options or {}))
        for name in optimizers:
            if not hasattr(descent, OPTIMIZERS[name.strip().lower()][0]):
                continue
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
