"""K-FAC under data parallelism: the Kronecker factors averaged over the ranks, once per factor update.

Under ``DistributedDataParallel`` each rank's hooks see only its own part of the batch, so
its factors :math:`A` (inputs) and :math:`G` (output gradients) are estimates from
:math:`B/N` samples; DDP averages the gradients but not the factors. With equal local
batches, the mean over ranks of the per-rank factors is the factor of the global batch
(both are means over samples), so :class:`descent.KFAC` averages them, every layer's
together in one ``all_reduce`` (float64), on the steps that collect them (every
``T_cov``); the step then equals one process's on the global batch.

Example:
    >>> import torch
    >>> from descent.distributed._kfac import kfac_process_group
    >>> kfac_process_group(torch.nn.Linear(2, 2), None) is None   # no DDP, no group: one process
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._comm import comm_device, sum_across, traffic

__all__ = ["kfac_process_group", "average_factors"]


def kfac_process_group(model: nn.Module, process_group: Any = None) -> Any:
    """The group whose ranks' factors K-FAC averages: ``process_group`` if given, else a DDP
    model's (when ``torch.distributed`` is initialized with more than one rank), else None."""
    if process_group is not None:
        return process_group
    if not dist.is_available() or not dist.is_initialized():
        return None
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and dist.get_world_size(model.process_group) > 1:
        return model.process_group
    return None


def average_factors(stats: dict[int, dict[str, Any]], layers: list[int], group: Any) -> None:
    """Replace the factors collected this step by their mean over ``group`` (one ``all_reduce``).

    Args:
        stats: K-FAC's collected statistics, ``{id(weight): {"A": Tensor, "G": Tensor, ...}}``.
        layers: the ``id(weight)`` of every K-FAC layer, in param-group order (the same on every rank).
        group: the process group.

    Raises:
        RuntimeError: on every rank, when the ranks collected different factors this step
            (e.g. a layer ran on one rank only), instead of leaving the others waiting.
    """
    world = dist.get_world_size(group)
    if world == 1:
        return
    keys = [(k, name) for k in layers if k in stats for name in ("A", "G") if isinstance(stats[k].get(name), Tensor)]
    numel = sum(stats[k][n].numel() for k, n in keys)
    shape = torch.tensor([len(keys), numel, -len(keys), -numel], dtype=torch.int64, device=comm_device(group))
    dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=group)
    traffic["calls"] += 1
    if shape.tolist() != [len(keys), numel, -len(keys), -numel]:
        raise RuntimeError(f"KFAC: the ranks collected different Kronecker factors this step ({len(keys)} "
                           f"factors of {numel} numbers here); every rank must run every K-FAC layer")
    if not keys:
        return
    tensors = [stats[k][n] for k, n in keys]
    for (k, n), t, total in zip(keys, tensors, sum_across([t.double() for t in tensors], group)):
        stats[k][n] = (total / world).to(t.dtype)
