"""Audit an optimizer's configuration (no training needed): the source documents' anti-patterns."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..optim.param_groups import _is_norm_module
from ..optim.registry import is_adaptive
from ._findings import Finding, Findings

__all__ = ["audit", "AUDIT_CODES"]

#: Stable codes of the audit's rules.
AUDIT_CODES = ("decay_on_bias_norm", "zero_weight_decay", "adamw_lr_high_transformer", "no_warmup",
               "no_clipping", "sgd_no_momentum", "batch_lr_unscaled", "schedule_per_epoch")
_S000 = "000 (SGD overview): anti-patterns"
_S002 = "002 (Optimization in AI): anti-patterns"


def _kind(optimizer: torch.optim.Optimizer) -> str:
    return type(optimizer).__name__.lower()


def _names(model: nn.Module | None) -> dict[int, tuple[str, bool]]:
    """id(param) -> (name, belongs to a norm layer)."""
    if model is None:
        return {}
    out: dict[int, tuple[str, bool]] = {}
    for mname, mod in model.named_modules():
        norm = _is_norm_module(mod)
        for pname, p in mod.named_parameters(recurse=False):
            out.setdefault(id(p), (f"{mname}.{pname}" if mname else pname, norm))
    return out


def _is_sequence_model(model: nn.Module | None) -> tuple[bool, bool]:
    """(transformer-like, rnn-like)."""
    if model is None:
        return False, False
    tf = rnn = False
    for mod in model.modules():
        name = type(mod).__name__.lower()
        if isinstance(mod, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) \
                or "attention" in name or "transformer" in name:
            tf = True
        if isinstance(mod, nn.RNNBase):
            rnn = True
    return tf, rnn


def _decay_rules(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> list[Finding]:
    names = _names(model)
    out: list[Finding] = []
    bad: list[str] = []
    for gi, group in enumerate(optimizer.param_groups):
        if not group.get("weight_decay", 0):
            continue
        gnames = group.get("param_names")
        for i, p in enumerate(group["params"]):
            name, norm = names.get(id(p), (gnames[i] if gnames and i < len(gnames) else f"group{gi}[{i}]", False))
            if p.ndim <= 1 or norm or name.endswith("bias"):
                bad.append(name)
    if bad:
        out.append(Finding("decay_on_bias_norm", "warning",
                           f"weight decay is applied to {len(bad)} bias/norm/1-D parameter(s)", {"params": bad[:20]},
                           "build the groups with descent.param_groups(model, weight_decay=...)", _S002))
    decays = [g.get("weight_decay", 0) for g in optimizer.param_groups]
    if "adamw" in _kind(optimizer) and all(d == 0 for d in decays):
        out.append(Finding("zero_weight_decay", "warning",
                           "AdamW with weight_decay=0 in every group: the decoupled decay AdamW exists for is off",
                           {"weight_decay": decays}, "set weight_decay (0.01-0.1) on the weight matrices "
                           "(descent.param_groups)", _S002 + " ('AdamW wd 0 while assuming decay')"))
    return out


def _lr_rules(optimizer: torch.optim.Optimizer, model: nn.Module | None, scheduler: Any,
              clip_norm: float | None) -> list[Finding]:
    out: list[Finding] = []
    kind = _kind(optimizer)
    lr = max(float(g["lr"]) for g in optimizer.param_groups)
    tf, rnn = _is_sequence_model(model)
    if "adamw" in kind and tf and lr >= 1e-3:
        out.append(Finding("adamw_lr_high_transformer", "warning", f"AdamW lr={lr:g} on a transformer",
                           {"lr": lr}, "use 1e-4 to 3e-4 with warmup", _S000 + " ('AdamW lr=1e-3 for LLM')"))
    adaptive = is_adaptive(optimizer)
    large = lr >= 1e-3 if adaptive else lr >= 0.1
    start = _start_multiplier(scheduler)
    if large and (start is None or start >= 0.5):
        out.append(Finding("no_warmup", "warning" if adaptive else "info",
                           f"lr={lr:g} from the first step with no warmup", {"lr": lr, "start_multiplier": start},
                           "add a linear warmup (descent.schedules.WarmupCosine, warmup 2-5 % of the steps)",
                           _S002 + " ('AdamW with a large lr and no warmup diverges early')"))
    if (tf or rnn) and clip_norm is None:
        out.append(Finding("no_clipping", "warning",
                           f"no gradient clipping on a {'transformer' if tf else 'recurrent'} model",
                           {"model": type(model).__name__}, "clip the global grad norm at 1.0 (pass clip_norm= "
                           "to audit when you do)", _S002 + " ('transformer without clipping')"))
    if kind == "sgd" and all(g.get("momentum", 0) == 0 for g in optimizer.param_groups):
        out.append(Finding("sgd_no_momentum", "info", "SGD without momentum", {"momentum": 0},
                           "momentum=0.9 (nesterov=True)", "003 (Gradient descent): common mistake 6"))
    return out


def _start_multiplier(scheduler: Any) -> float | None:
    """The scheduler's lr multiplier at step 0 (None when unknown or no scheduler)."""
    if scheduler is None:
        return None
    scheds = getattr(scheduler, "schedules", None)  # descent.schedules.Scheduler
    if scheds:
        vals = [float(s(0)) for s in scheds if s is not None]
        return min(vals) if vals else None
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas:
        return min(float(f(0)) for f in lambdas)
    if isinstance(scheduler, torch.optim.lr_scheduler.LinearLR):
        return float(scheduler.start_factor)
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return 1.0 / 25.0
    inner = getattr(scheduler, "_schedulers", None)  # SequentialLR / ChainedScheduler
    if inner:
        return _start_multiplier(inner[0])
    return None


def _batch_rule(optimizer: torch.optim.Optimizer, batch_size: int | None, base_batch_size: int | None,
                base_lr: float | None) -> list[Finding]:
    if not (batch_size and base_batch_size) or batch_size == base_batch_size:
        return []
    lr = float(optimizer.param_groups[0]["lr"])
    ref = lr if base_lr is None else float(base_lr)
    if base_lr is not None and not math.isclose(lr, ref, rel_tol=0.01):
        return []
    k = batch_size / base_batch_size
    adaptive = is_adaptive(optimizer)
    expected = ref * (math.sqrt(k) if adaptive else k)
    return [Finding("batch_lr_unscaled", "warning",
                    f"batch size {base_batch_size} -> {batch_size} but the lr stayed {lr:g}",
                    {"batch_size": batch_size, "base_batch_size": base_batch_size, "lr": lr,
                     "suggested_lr": expected, "rule": "sqrt" if adaptive else "linear"},
                    f"scale the lr to about {expected:.3g} ({'square-root' if adaptive else 'linear'} scaling) "
                    "and compare 2-3 candidates briefly", "001/003: batch size -> lr linear scaling rule")]


def audit(optimizer: torch.optim.Optimizer, model: nn.Module | None = None, scheduler: Any = None, *,
          clip_norm: float | None = None, batch_size: int | None = None, base_batch_size: int | None = None,
          base_lr: float | None = None) -> Findings:
    """Check a training configuration against the source documents' anti-patterns (see :data:`AUDIT_CODES`).

    Rules: weight decay on bias/norm/1-D parameters; AdamW with zero decay everywhere; AdamW lr >= 1e-3
    on a transformer; a large lr (>= 1e-3 adaptive, >= 0.1 SGD) with no warmup (scheduler multiplier at
    step 0 >= 0.5 or no scheduler); no clipping (``clip_norm=None``) on a transformer/RNN; SGD without
    momentum; batch size changed (``base_batch_size`` -> ``batch_size``) while the lr equals ``base_lr``
    (or, without ``base_lr``, as a reminder with the scaled value); a descent ``Scheduler`` that
    detected per-epoch stepping.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        model: the model (names parameters, finds norm layers, transformers and RNNs).
        scheduler: the lr scheduler, if any.
        clip_norm: the gradient-clipping max norm in use (None = no clipping).
        batch_size, base_batch_size: the current batch size and the one the lr was tuned at.
        base_lr: the lr tuned at ``base_batch_size``.

    Returns:
        :class:`Findings`.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
        >>> descent.audit(opt, model).codes
        ['decay_on_bias_norm', 'sgd_no_momentum']
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"Invalid optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    found = Findings(_decay_rules(optimizer, model) + _lr_rules(optimizer, model, scheduler, clip_norm)
                     + _batch_rule(optimizer, batch_size, base_batch_size, base_lr))
    cadence = getattr(scheduler, "cadence", None)
    if cadence:
        found.append(Finding("schedule_per_epoch", "warning", str(cadence.get("message", cadence)),
                             {"cadence": cadence}, "call scheduler.step() after every optimizer.step()", _S002))
    if model is None:
        found.notes.append("no model given: norm layers and transformer/RNN rules judged by shape only or skipped")
    return found
