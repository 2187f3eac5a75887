"""Recipes: optimizer + schedule + clipping + precision per scenario, from the source documents' tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["recipe", "Recipe", "SCENARIOS"]

_S000 = "000 (SGD overview): decision table"
_S001 = "001 (SGD tutorial): vision starter recipe / batch-size scaling"
_S002 = "002 (Optimization in AI): scenario -> optimizer + schedule table"
_S003 = "003 (Gradient descent): optimizer selection strategy / linear scaling rule"

#: scenario -> (optimizer kind, hyperparameters, schedule, warmup fraction, clip, precision, ref batch, sources)
_TABLE: dict[str, dict[str, Any]] = {
    "llm": dict(opt="adamw", lr=3e-4, betas=(0.9, 0.95), wd=0.1, sched="warmup_cosine", warmup=0.02, clip=1.0,
                precision="bf16", src=_S002 + " ('LLM default stack: AdamW + cosine + warmup 0.5-3 % + clip 1.0 + bf16')"),
    "vit": dict(opt="adamw", lr=1e-3, betas=(0.9, 0.999), wd=0.05, sched="warmup_cosine", warmup=0.05, clip=1.0,
                precision="bf16", ref=1024, src=_S002 + " ('Vision Transformer: AdamW + cosine'); lr 1e-3 at batch "
                "1024 and wd 0.05 from DeiT (Touvron et al. 2021)"),
    "cnn": dict(opt="sgd", lr=0.1, momentum=0.9, nesterov=True, wd=5e-4, sched="onecycle", warmup=0.1, clip=None,
                precision="bf16", ref=256, src=_S002 + " ('Vision CNN: SGD-momentum + OneCycle', lr 0.1 Nesterov "
                "wd 5e-4); " + _S000 + "; base batch 256 from Goyal et al. 2017"),
    "finetune": dict(opt="adamw", lr=3e-5, betas=(0.9, 0.999), wd=0.01, sched="warmup_linear", warmup=0.06, clip=1.0,
                     precision="bf16", src=_S003 + " ('fine-tuning: 1/10-1/100 of the original lr': 3e-4 / 10)"),
    "gan": dict(opt="adam", lr=2e-4, betas=(0.5, 0.999), wd=0.0, sched="constant", warmup=0.0, clip=None,
                precision="fp32", src=_S002 + " ('GAN: Adam(beta1=0.5, beta2=0.999)'); lr 2e-4 from DCGAN "
                "(Radford et al. 2016); build one recipe per network"),
    "rl": dict(opt="adam", lr=3e-4, betas=(0.9, 0.999), eps=1e-5, wd=0.0, sched="linear", warmup=0.0, clip=0.5,
               precision="fp32", src=_S002 + " ('RL: Adam, lr=3e-4'); eps 1e-5, clip 0.5 and linear lr annealing "
               "from PPO (Schulman et al. 2017)"),
    "quick": dict(opt="adamw", lr=1e-3, betas=(0.9, 0.999), wd=0.01, sched="plateau", warmup=0.0, clip=None,
                  precision="fp32", ref=32, src=_S002 + " ('quick experiments: Adam(W) + ReduceLROnPlateau', factor "
                  "0.5 patience 3 min_lr 1e-6); " + _S003 + " (start: lr 1e-3 at batch 32)"),
    "memory_limited": dict(opt="adafactor", lr=1e-3, wd=0.0, sched="warmup_cosine", warmup=0.02, clip=1.0,
                           precision="bf16", src=_S002 + " ('memory-limited: Adafactor / 8-bit AdamW'); "
                           + _S000 + " ('Lion or 8-bit Adam')"),
    "large_batch": dict(opt="lamb", lr=2e-3, betas=(0.9, 0.999), wd=0.01, sched="warmup_cosine", warmup=0.05,
                        clip=1.0, precision="bf16", src=_S002 + " ('large batch: LAMB / Lion'; You et al. 2020)"),
    "convex": dict(opt="sgd", lr=0.1, momentum=0.0, nesterov=False, wd=0.0, sched="robbins_monro", warmup=0.0,
                   clip=None, precision="fp32", src=_S000 + " ('convex: vanilla SGD with decreasing lr'); " + _S003
                   + " (sum lr = inf, sum lr^2 < inf)"),
    "online": dict(opt="sgd", lr=0.1, momentum=0.0, nesterov=False, wd=0.0, sched="inverse_sqrt", warmup=0.0,
                   clip=None, precision="fp32", src=_S000 + " ('online streaming: mini-batch SGD, lr ~ 1/sqrt(t)')"),
}
SCENARIOS = tuple(_TABLE)


@dataclass
class Recipe:
    """What :func:`recipe` built.

    Attributes:
        scenario: the scenario name.
        optimizer: the optimizer (param groups from :func:`descent.param_groups`).
        scheduler: the lr scheduler (call ``scheduler.step()`` after every optimizer step; for
            ``ReduceLROnPlateau``, ``scheduler.step(val_loss)`` after every evaluation).
        clip_norm: the max global gradient norm to clip at (``None`` = no clipping).
        precision: ``"bf16"`` (autocast) or ``"fp32"``.
        lr: the base (peak) lr after batch-size scaling.
        explanations: ``(choice, why, source)`` for every decision.
    """

    scenario: str
    optimizer: torch.optim.Optimizer
    scheduler: Any
    clip_norm: float | None
    precision: str
    lr: float
    explanations: list[tuple[str, str, str]] = field(default_factory=list)

    def explain(self) -> str:
        """The explanations as text, one line per choice."""
        return "\n".join(f"{c}: {w} [{s}]" for c, w, s in self.explanations)


def _optimizer(kind: str, groups: list[dict[str, Any]], row: dict[str, Any], lr: float,
               why: list[tuple[str, str, str]]) -> torch.optim.Optimizer:
    import descent

    betas = row.get("betas", (0.9, 0.999))
    if kind == "sgd":
        return descent.SGD(groups, lr=lr, momentum=row["momentum"], nesterov=row["nesterov"])
    if kind in ("adam", "adamw"):
        cls = descent.AdamW if kind == "adamw" else descent.Adam
        return cls(groups, lr=lr, betas=betas, eps=row.get("eps", 1e-8))
    if kind == "adafactor":
        why.append(("optimizer", f"descent.Adafactor with an external lr {lr:g} (relative_step=False, "
                    "scale_parameter=False: the schedule below drives it), factored second moment, no momentum",
                    "Shazeer & Stern 2018; Hugging Face's recommended external-lr setting"))
        return descent.Adafactor(groups, lr=lr, relative_step=False, scale_parameter=False)
    if kind == "lamb":
        why.append(("optimizer", f"descent.LAMB at lr {lr:g} (layer-wise trust ratio keeps large-batch steps "
                    "stable)", _S002))
        return descent.LAMB(groups, lr=lr)
    raise AssertionError(kind)  # pragma: no cover - table is fixed


def _schedule(kind: str, total: int, warmup: float) -> Any:
    from descent import schedules as S

    if kind == "warmup_cosine":
        return S.WarmupCosine(total, warmup=warmup, min_ratio=0.1)
    if kind == "warmup_linear":
        return S.WarmupLinear(total, warmup=warmup)
    if kind == "onecycle":
        return S.OneCycle(total, pct_start=warmup)
    if kind == "linear":
        return S.Linear(1.0, 0.0, total)
    if kind == "robbins_monro":
        return S.RobbinsMonro(tau=max(1.0, total / 10), power=1.0)
    if kind == "inverse_sqrt":
        return S.InverseSqrt(offset=max(1, total // 100))
    return S.Constant()


def _scale(lr: float, row: dict[str, Any], batch_size: int | None, base_batch_size: int | None,
           why: list[tuple[str, str, str]]) -> float:
    base = base_batch_size or row.get("ref")
    if not batch_size:
        return lr
    if not base:
        why.append(("batch size", f"no base_batch_size for this scenario's lr: lr {lr:g} not scaled", _S003))
        return lr
    k = batch_size / base
    sqrt = row["opt"] not in ("sgd",)
    new = lr * (math.sqrt(k) if sqrt else k)
    why.append(("batch size", f"{base} -> {batch_size}: lr {lr:g} -> {new:.3g} by "
                f"{'square-root scaling (adaptive optimizer; Malladi et al. 2022)' if sqrt else 'the linear scaling rule'};"
                " treat it as a starting point and compare 2-3 candidates", _S001 + "; " + _S003))
    return new


def _auto_lr(opt: torch.optim.Optimizer, model: nn.Module, batches: Any, loss_fn: Any, forward: Any,
             total_steps: int, schedule: Any, why: list[tuple[str, str, str]]) -> float:
    """``lr="auto"``: the finder's suggestion for this run, written into every group (ratios kept)."""
    from .lr_finder import find_lr

    res = find_lr(model, opt, batches, loss_fn, forward=forward, total_steps=total_steps, schedule=schedule)
    if res.suggestion is None or res.group_lrs is None:
        raise ValueError(f"Invalid lr: 'auto' found no lr for this model and data ({res.reason or res.notes})")
    for g, glr in zip(opt.param_groups, res.group_lrs):
        g["lr"] = glr
    why.append(("lr", f"{res.suggestion:.3g} (range {res.low:.3g}-{res.high:.3g}) from descent.find_lr for a run of "
                f"{total_steps} steps with this schedule", "descent.find_lr(total_steps=...): probe runs"))
    return float(res.suggestion)


def recipe(scenario: str, model: nn.Module, total_steps: int, batch_size: int | None = None,
           base_batch_size: int | None = None, *, lr: float | str | None = None, weight_decay: float | None = None,
           batches: Any = None, loss_fn: Any = None, forward: Any = None) -> Recipe:
    """Build the optimizer, schedule, clipping norm and precision the source documents recommend.

    Scenarios (:data:`SCENARIOS`): ``llm`` (AdamW 3e-4, betas (0.9, 0.95), wd 0.1, 2 % warmup + cosine,
    clip 1.0, bf16), ``vit`` (AdamW + warmup/cosine), ``cnn`` (SGD 0.1 Nesterov momentum 0.9, wd 5e-4,
    OneCycle), ``finetune`` (AdamW 3e-5 = pretraining lr / 10, warmup + linear), ``gan`` (Adam 2e-4,
    betas (0.5, 0.999)), ``rl`` (Adam 3e-4), ``quick`` (AdamW 1e-3 + ReduceLROnPlateau),
    ``memory_limited`` (Adafactor, else Lion), ``large_batch`` (LAMB, else Lion, else AdamW),
    ``convex`` (SGD with :math:`\\eta_t = \\eta_0/(1+t/\\tau)`), ``online`` (SGD with
    :math:`\\eta_t \\propto 1/\\sqrt{t}`). Weight decay stays off biases and norms
    (:func:`descent.param_groups`). With ``batch_size`` (and ``base_batch_size``, or the scenario's
    reference batch), the lr is scaled linearly for SGD and by the square root for adaptive methods.

    No scenario uses an optimizer of 2024 (schedule-free, Prodigy, SOAP, AdEMAMix, MARS, ADOPT):
    the source documents do not cover them, and ``benchmarks/optimizer_quality.py`` (README)
    found none ahead of tuned AdamW on every built-in task: schedule-free AdamW led on charlm and
    SOAP on the mnist1d MLP, each in one short run at a small tuning budget, too little to
    change a scenario the documents' tables set.

    Args:
        scenario: one of :data:`SCENARIOS`.
        model: the model to optimize.
        total_steps: optimizer steps of the whole run (sizes warmup and decay).
        batch_size: the batch size you will train with.
        base_batch_size: the batch size the recipe's lr refers to (defaults per scenario where known).
        lr: override the base lr (before scaling), or ``"auto"``: :func:`descent.find_lr` with its
            defaults, ``total_steps`` and this recipe's schedule picks it (the same call as
            ``descent find-lr`` and ``descent train --lr auto``); needs ``batches`` and ``loss_fn``
            or ``forward`` (as for :func:`descent.find_lr`). No batch-size scaling on top.
        weight_decay: override the weight decay.
        batches, loss_fn, forward: the training batches and loss for ``lr="auto"``.

    Returns:
        A :class:`Recipe`.

    Example:
        >>> import torch, descent
        >>> r = descent.recipe("llm", torch.nn.Linear(8, 8), total_steps=1000)
        >>> type(r.optimizer).__name__, r.clip_norm, r.precision
        ('AdamW', 1.0, 'bf16')
    """
    if scenario not in _TABLE:
        raise ValueError(f"Invalid scenario: {scenario!r} (must be one of {SCENARIOS})")
    if int(total_steps) != total_steps or total_steps < 2:
        raise ValueError(f"Invalid total_steps: {total_steps} (must be an integer >= 2)")
    if not isinstance(model, nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ValueError("Invalid model: it has no trainable parameters")
    import descent

    row = _TABLE[scenario]
    why: list[tuple[str, str, str]] = [("scenario", f"{scenario}: {row['opt']} lr {row['lr']:g}, schedule "
                                        f"{row['sched']}, clip {row['clip']}, {row['precision']}", row["src"])]
    auto = isinstance(lr, str)
    if auto and (lr != "auto" or batches is None or (loss_fn is None and forward is None)):
        raise ValueError(f"Invalid lr: {lr!r} (a number, None, or 'auto' with batches and loss_fn or forward)")
    base_lr = float(row["lr"] if lr is None or auto else lr)
    peak = base_lr if auto else _scale(base_lr, row, batch_size, base_batch_size, why)
    wd = float(weight_decay if weight_decay is not None else row["wd"])
    groups = descent.param_groups(model, weight_decay=wd)
    why.append(("weight decay", f"{wd:g} on weight matrices only (biases, norms and embeddings excluded)",
                _S002 + " ('no decay on LayerNorm/bias')"))
    opt = _optimizer(row["opt"], groups, row, peak, why)
    if auto:
        peak = _auto_lr(opt, model, batches, loss_fn, forward, int(total_steps),
                        None if row["sched"] == "plateau" else _schedule(row["sched"], int(total_steps), row["warmup"]),
                        why)
    if row["sched"] == "plateau":
        sched: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=3, min_lr=1e-6)
        why.append(("schedule", "ReduceLROnPlateau(factor 0.5, patience 3, min_lr 1e-6): call "
                    "scheduler.step(val_loss) after each evaluation", _S002))
    else:
        sched = descent.schedules.Scheduler(opt, _schedule(row["sched"], int(total_steps), row["warmup"]))
        why.append(("schedule", f"{row['sched']} over {int(total_steps)} steps (warmup {row['warmup']:.0%}); "
                    "call scheduler.step() after every optimizer step", row["src"]))
    return Recipe(scenario, opt, sched, row["clip"], row["precision"], peak, why)
