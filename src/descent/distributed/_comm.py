"""The collectives of the distributed step, each counted in :data:`traffic`.

Every helper sends one collective for a whole bucket (never one per tensor), and adds
the bytes this rank sent to :data:`traffic`, which ``benchmarks/distributed_step.py``
reads. Counting is a Python integer add per collective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["traffic", "reset_traffic", "sum_across", "any_across", "assign_owners", "exchange"]

#: Bytes this process sent through descent's collectives, by kind ("reduce", "exchange", "gather": the
#: all-gathers of the "gather" mode, ``full_tensor()``).
traffic: dict[str, int] = {"reduce": 0, "exchange": 0, "gather": 0, "calls": 0}


def reset_traffic() -> dict[str, int]:
    """Zero the counters and return the old values."""
    old = dict(traffic)
    for k in traffic:
        traffic[k] = 0
    return old


def sum_across(partials: Sequence[Tensor], group) -> list[Tensor]:
    """Sum each tensor over the ranks of ``group`` with one ``all_reduce`` (they are concatenated).

    Args:
        partials: tensors of one dtype and device (per-rank partial sums).
        group: the process group (a DTensor mesh's).

    Returns:
        New tensors of the same shapes holding the sums.
    """
    if not partials:
        return []
    flat = torch.cat([t.reshape(-1) for t in partials])
    world = dist.get_world_size(group)
    if world > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        # ring all-reduce: each rank sends about 2 (N-1)/N of the buffer
        traffic["reduce"] += 2 * (world - 1) * flat.numel() * flat.element_size() // world
        traffic["calls"] += 1
    out, at = [], 0
    for t in partials:
        out.append(flat[at: at + t.numel()].view(t.shape))
        at += t.numel()
    return out


def any_across(flags: Sequence[bool], group) -> list[bool]:
    """Element-wise OR of per-rank boolean lists over ``group`` (one ``all_reduce`` of a small int tensor)."""
    if not flags:
        return []
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
    if dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        traffic["calls"] += 1
    return [bool(v) for v in t.tolist()]


def assign_owners(costs: Sequence[float], ranks: int) -> list[int]:
    """Give each item to a rank, largest first to the least loaded (LPT); the same answer on every rank.

    Example:
        >>> assign_owners([8.0, 1.0, 4.0, 4.0], 2)
        [0, 0, 1, 1]
    """
    load = [0.0] * ranks
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(ranks), key=lambda q: (load[q], q))
        owner[i] = r
        load[r] += costs[i]
    return owner


def _wire(t: Tensor) -> Tensor:
    """The bytes of ``t`` (every backend moves uint8; gloo has no bfloat16 all-to-all)."""
    return t.view(torch.uint8)


def exchange(send: Sequence[Sequence[Tensor]], recv_numels: Sequence[Sequence[int]], dtype: torch.dtype,
             group) -> list[list[Tensor]]:
    """All-to-all of lists of tensors: ``send[r]`` goes to rank ``r``; returns what each rank sent here.

    Args:
        send: for each destination rank, the tensors to send it (any shapes; flattened).
        recv_numels: for each source rank, the element counts of the tensors it sends here.
        dtype: the one dtype of every tensor.
        group: the process group.

    Returns:
        For each source rank, flat tensors with ``recv_numels[r]`` elements.
    """
    world = dist.get_world_size(group)
    me = dist.get_rank(group)
    flat_send = [torch.cat([t.reshape(-1) for t in ts]) if ts else torch.empty(0, dtype=dtype) for ts in send]
    in_sizes = [t.numel() for t in flat_send]
    out_sizes = [sum(n) for n in recv_numels]
    src = torch.cat(flat_send).to(dtype)
    dst = torch.empty(sum(out_sizes), dtype=dtype)
    if world > 1 and (sum(in_sizes) or sum(out_sizes)):
        size = src.element_size()
        dist.all_to_all_single(_wire(dst), _wire(src), [n * size for n in out_sizes], [n * size for n in in_sizes],
                               group=group)
        traffic["exchange"] += (sum(in_sizes) - in_sizes[me]) * src.element_size()
        traffic["calls"] += 1
    else:
        dst.copy_(src)
    out, at = [], 0
    for numels in recv_numels:
        row = []
        for n in numels:
            row.append(dst[at: at + n])
            at += n
        out.append(row)
    return out
