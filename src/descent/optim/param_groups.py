"""Param groups that keep weight decay off biases, norms and other 1-D parameters."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._validate import check_nonneg

__all__ = ["param_groups", "NORM_TYPES"]

#: Module types whose parameters never get weight decay.
NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
_NORM_NAME_HINTS = ("norm", "ln_", "layernorm", "rmsnorm", "batchnorm", "groupnorm")


def _is_norm_module(module: nn.Module) -> bool:
    if isinstance(module, NORM_TYPES):
        return True
    # user-defined norms (e.g. a hand-written RMSNorm) are recognised by class name
    return "norm" in type(module).__name__.lower()


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.01,
    no_decay: Iterable[str | type[nn.Module]] = (),
    *,
    decay_embeddings: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into a decayed and a non-decayed group.

    Weight decay goes on weight matrices and conv kernels. It stays off biases, every
    parameter of a normalization layer (LayerNorm, RMSNorm, BatchNorm, GroupNorm,
    InstanceNorm, or any module whose class name contains "norm"), every other
    parameter with fewer than 2 dimensions, embeddings (unless ``decay_embeddings``)
    and whatever ``no_decay`` names. Frozen parameters (``requires_grad=False``) are
    left out; every trainable parameter appears exactly once, also when modules share
    it. Each group keeps the parameters' names under ``"param_names"`` (torch's key),
    so tools can report them.

    Args:
        model: the module.
        weight_decay: the decay of the decayed group.
        no_decay: extra exclusions: module types, or name patterns matched against the
            full parameter name (``fnmatch`` patterns such as ``"*.pos_emb"``, or plain
            substrings such as ``"head"``).
        decay_embeddings: put ``nn.Embedding`` weights in the decayed group.
        **group_options: extra keys copied into both groups (e.g. ``lr=1e-3``).

    Returns:
        A list of torch param group dicts (empty groups omitted), decayed group first.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        >>> groups = descent.param_groups(model, weight_decay=0.1)
        >>> [(g["weight_decay"], g["param_names"]) for g in groups]
        [(0.1, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
        >>> opt = descent.AdamW(groups, lr=3e-4)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: expected a torch.nn.Module, got {type(model).__name__}")
    check_nonneg("weight_decay", weight_decay)
    reserved = {"params", "param_names", "weight_decay"} & set(group_options)
    if reserved:
        raise ValueError(f"Invalid group option(s) {sorted(reserved)}: set by param_groups itself")
    patterns = [n for n in no_decay if isinstance(n, str)]
    types = tuple(t for t in no_decay if isinstance(t, type))
    bad = [n for n in no_decay if not isinstance(n, (str, type))]
    if bad:
        raise ValueError(f"Invalid no_decay entries: {bad!r} (must be name patterns or module types)")

    decay: list[tuple[str, torch.Tensor]] = []
    keep: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{pname}" if module_name else pname
            excluded = (
                p.ndim < 2
                or _is_norm_module(module)
                or (isinstance(module, nn.Embedding) and not decay_embeddings)
                or (types and isinstance(module, types))
                or any(fnmatch.fnmatchcase(full, pat) or pat in full for pat in patterns)
            )
            (keep if excluded else decay).append((full, p))

    groups = []
    for members, wd in ((decay, float(weight_decay)), (keep, 0.0)):
        if members:
            groups.append({"params": [p for _, p in members], "param_names": [n for n, _ in members],
                           "weight_decay": wd, **group_options})
    return groups
