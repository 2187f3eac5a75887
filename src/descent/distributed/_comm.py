"""The collectives of the distributed step, each counted in :data:`traffic`.

Every helper sends one collective for a whole bucket, or for one of its waves (never one per
tensor), and adds the bytes this rank sent to :data:`traffic`, which
``benchmarks/distributed_step.py`` reads. Counting is a Python integer add per collective.

Overlap: :func:`start_sum` and :func:`start_exchange` issue a collective with ``async_op=True``
and return a :class:`Pending`; the step splits a bucket into :func:`waves` and computes the next
wave while the previous one's collective is in flight (:func:`run_stages` for the statistics of
LAMB, Adafactor and MARS; the Muon and Shampoo/SOAP owner steps, :func:`pipeline`). It is on by
default; ``DESCENT_OVERLAP=0`` in the environment (or ``_comm.overlap = False``) makes every
collective blocking. The numbers are the same either way.

Exit: in a core dump of a process that aborted at exit ("terminate called without an active
exception"; 2-3 of 10 runs of ``descent train --nproc 2 --optimizer muon`` with overlapping on), the
main thread was in the interpreter's final garbage collection, which frees the process group (an
FSDP2 model and its device mesh hold it in reference cycles), and a gloo worker thread was freeing
a collective's work and, with it, a tensor that has a Python object: that takes the GIL, which a
thread cannot take once the interpreter shuts down. So the first async collective registers
``gc.collect`` with :mod:`atexit`, which runs before the shutdown, and the command collects after
``destroy_process_group`` (0 aborts in 16 runs, then 30). :data:`waited` adds up the seconds
spent blocked.
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["traffic", "reset_traffic", "sum_across", "any_across", "assign_owners", "exchange", "Pending",
           "start_sum", "start_exchange", "comm_device", "waves", "run_stages", "pipeline", "overlap", "waited"]

#: Bytes this process sent through descent's collectives, by kind ("reduce", "exchange", "gather": the
#: all-gathers of the "gather" mode, ``full_tensor()``).
traffic: dict[str, int] = {"reduce": 0, "exchange": 0, "gather": 0, "calls": 0}


#: Whether collectives overlap compute (async, in waves); ``DESCENT_OVERLAP=0`` turns it off (see above).
overlap = os.environ.get("DESCENT_OVERLAP", "1") != "0"
#: How many waves a bucket is split into when overlapping (the first wave's collective is not hidden),
#: and the fewest elements a wave should hold (smaller buckets go in fewer waves: a collective has a latency).
WAVES = 4
MIN_WAVE_NUMEL = 1 << 16
#: Seconds this process spent blocked in descent's collectives (``[seconds]``; read by the benchmark).
waited = [0.0]
_collect_at_exit: list[bool] = []


def reset_traffic() -> dict[str, int]:
    """Zero the counters (and :data:`waited`) and return the old values."""
    old = dict(traffic)
    for k in traffic:
        traffic[k] = 0
    waited[0] = 0.0
    return old


class Pending:
    """A collective in flight: :meth:`wait` blocks until it is done and returns its result."""

    def __init__(self, work: Any, finish: Callable[[], Any]) -> None:
        self._work, self._finish = work, finish

    def wait(self) -> Any:
        if self._work is not None:
            start = time.perf_counter()
            self._work.wait()
            waited[0] += time.perf_counter() - start
            self._work = None
        return self._finish()


def _issue(call: Callable[..., Any]) -> Any:
    """Run a collective: async (its work handle) when overlapping, else blocking (timed in :data:`waited`)."""
    if overlap:
        if not _collect_at_exit:
            atexit.register(gc.collect)  # see the module's docstring
            _collect_at_exit.append(True)
        return call(async_op=True)
    start = time.perf_counter()
    call(async_op=False)
    waited[0] += time.perf_counter() - start
    return None


def start_sum(partials: Sequence[Tensor], group) -> Pending:
    """Start summing each tensor over the ranks of ``group`` (one ``all_reduce`` of their concatenation).

    Returns:
        A :class:`Pending` whose ``wait()`` gives new tensors of the same shapes holding the sums.
    """
    if not partials:
        return Pending(None, list)
    flat = torch.cat([t.reshape(-1) for t in partials])
    world = dist.get_world_size(group)
    work = None
    if world > 1:
        work = _issue(lambda async_op: dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group, async_op=async_op))
        # ring all-reduce: each rank sends about 2 (N-1)/N of the buffer
        traffic["reduce"] += 2 * (world - 1) * flat.numel() * flat.element_size() // world
        traffic["calls"] += 1

    def finish() -> list[Tensor]:
        out, at = [], 0
        for t in partials:
            out.append(flat[at: at + t.numel()].view(t.shape))
            at += t.numel()
        return out

    return Pending(work, finish)


def sum_across(partials: Sequence[Tensor], group) -> list[Tensor]:
    """Sum each tensor over the ranks of ``group`` with one ``all_reduce`` (they are concatenated).

    Args:
        partials: tensors of one dtype and device (per-rank partial sums).
        group: the process group (a DTensor mesh's).

    Returns:
        New tensors of the same shapes holding the sums.
    """
    return start_sum(partials, group).wait()


def waves(weights: Sequence[float], count: int | None = None) -> list[list[int]]:
    """Split ``range(len(weights))`` into at most ``count`` consecutive runs of about equal weight.

    The default ``count`` is :data:`WAVES`, fewer for a total under ``WAVES *`` :data:`MIN_WAVE_NUMEL`
    (the weights are element counts then), 1 without :data:`overlap`. Use global sizes: every
    rank must split alike.

    Example:
        >>> waves([1, 1, 1, 1, 4], 2)
        [[0, 1, 2, 3], [4]]
    """
    total = float(sum(weights)) or 1.0
    if count is None:
        count = max(1, min(WAVES, int(total // max(MIN_WAVE_NUMEL, 1)))) if overlap else 1
    out: list[list[int]] = [[]]
    acc = 0.0
    for i, w in enumerate(weights):
        if out[-1] and acc >= total * len(out) / count and len(out) < count:
            out.append([])
        out[-1].append(i)
        acc += w
    return out if out[0] else []


def run_stages(stages: Sequence[Generator[list[Tensor], list[Tensor], None]], group) -> None:
    """Drive per-wave generators that yield this rank's partial sums and receive the sums over ``group``.

    Every wave's first pass runs, each starting its ``all_reduce`` at once, before the first
    wait; then round by round each wave gets its sums and starts its next reduction. Every
    generator must yield the same number of times on every rank (the collectives' order).
    """
    pending = [(g, start_sum(next(g), group)) for g in stages]
    while pending:
        ahead = []
        for g, p in pending:
            try:
                ahead.append((g, start_sum(g.send(p.wait()), group)))
            except StopIteration:
                pass
        pending = ahead


def pipeline(runs: Sequence[list[int]], send: Callable[[list[int]], Pending],
             work: Callable[[list[int], Any], Pending | None], finish: Callable[[list[int], Any], None]) -> None:
    """The owner steps' waves: ``send(run)`` starts a run's trip to its owners one run ahead, ``work(run,
    received)`` computes on what arrived and may start the trip back (a :class:`Pending`), and once every
    run has been worked ``finish(run, returned)`` takes each return trip in order."""
    ahead = send(runs[0]) if runs else None
    back = []
    for k, run in enumerate(runs):
        pending, ahead = ahead, (send(runs[k + 1]) if k + 1 < len(runs) else None)
        trip = work(run, pending.wait())
        if trip is not None:
            back.append((run, trip))
    for run, trip in back:
        finish(run, trip.wait())


def comm_device(group=None) -> torch.device:
    """Where to put a tensor made for a collective of ``group`` that has no data tensor to follow (flags,
    counts, an empty buffer): the CPU for gloo (or without CUDA), else the current CUDA device (NCCL
    takes CUDA tensors only)."""
    if not torch.cuda.is_available() or "gloo" in str(dist.get_backend(group)):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def any_across(flags: Sequence[bool], group) -> list[bool]:
    """Element-wise OR of per-rank boolean lists over ``group`` (one ``all_reduce`` of a small int tensor)."""
    if not flags:
        return []
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=comm_device(group))
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
    """All-to-all of lists of tensors: ``send[r]`` goes to rank ``r``; returns what each rank sent here
    (:func:`start_exchange`, waited for)."""
    return start_exchange(send, recv_numels, dtype, group).wait()


def start_exchange(send: Sequence[Sequence[Tensor]], recv_numels: Sequence[Sequence[int]], dtype: torch.dtype,
                   group) -> Pending:
    """Start an all-to-all of lists of tensors: ``send[r]`` goes to rank ``r``.

    Args:
        send: for each destination rank, the tensors to send it (any shapes; flattened).
        recv_numels: for each source rank, the element counts of the tensors it sends here.
        dtype: the one dtype of every tensor.
        group: the process group.

    Returns:
        A :class:`Pending` whose ``wait()`` gives, for each source rank, flat tensors with
        ``recv_numels[r]`` elements.
    """
    world = dist.get_world_size(group)
    me = dist.get_rank(group)
    in_sizes = [sum(t.numel() for t in ts) for ts in send]
    out_sizes = [sum(n) for n in recv_numels]
    flat = [t.reshape(-1) for ts in send for t in ts]  # one copy into the send buffer
    device = flat[0].device if flat else comm_device(group)
    src = torch.cat(flat).to(dtype) if flat else torch.empty(0, dtype=dtype, device=device)
    dst = torch.empty(sum(out_sizes), dtype=dtype, device=device)
    work = None
    if world > 1:  # every rank, even one with nothing to send or receive in this call (it is a collective)
        size = src.element_size()
        work = _issue(lambda async_op: dist.all_to_all_single(
            _wire(dst), _wire(src), [n * size for n in out_sizes], [n * size for n in in_sizes], group=group,
            async_op=async_op))
        traffic["exchange"] += (sum(in_sizes) - in_sizes[me]) * src.element_size()
        traffic["calls"] += 1
    else:
        dst.copy_(src)

    def finish() -> list[list[Tensor]]:
        out, at = [], 0
        for numels in recv_numels:
            row = []
            for n in numels:
                row.append(dst[at: at + n])
                at += n
            out.append(row)
        return out

    return Pending(work, finish)
