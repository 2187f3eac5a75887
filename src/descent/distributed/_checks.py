"""Checks that must agree on every rank, and building sharded tensors from full ones."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._comm import any_across
from ._layout import is_dtensor, like_param, local, local_slice, shard_group

__all__ = ["nonfinite_indices", "shard_like"]


def nonfinite_indices(tensors: Sequence[Tensor]) -> list[int]:
    """Indices of the tensors holding a NaN/Inf anywhere on the mesh (one ``all_reduce`` for the list).

    A NaN in one rank's shard makes every rank report the tensor, so every rank skips the
    same step. Plain tensors are checked locally; the DTensors' mesh is the first one's.
    """
    keep = [i for i, t in enumerate(tensors) if local(t).numel()]  # the inf-norm of an empty tensor raises
    flags = [False] * len(tensors)
    if keep:
        real = [local(tensors[i]) for i in keep]
        real = [torch.view_as_real(x) if x.is_complex() else x for x in real]
        norms = torch._foreach_norm(real, math.inf)
        finite = torch.isfinite(torch.stack([n.to(torch.float32).cpu() for n in norms])).tolist()
        for i, ok in zip(keep, finite):
            flags[i] = not ok
    meshed = [t for t in tensors if is_dtensor(t)]
    if meshed:
        flags = any_across(flags, shard_group(meshed[0]))
    return [i for i, f in enumerate(flags) if f]


def shard_like(full: Tensor, p: Tensor) -> Tensor:
    """This rank's part of a full-size tensor, laid out as ``p`` (a DTensor if ``p`` is one); no communication.

    Example:
        >>> import torch
        >>> shard_like(torch.arange(4.0), torch.zeros(4)).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    if not is_dtensor(p):
        return full.clone()
    return like_param(local_slice(full, p).clone(), p)
