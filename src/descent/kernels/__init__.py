"""descent's CPU kernels: single-pass Numba loops for optimizers torch has no fused kernel for.

Each kernel steps all the contiguous float32/float64 CPU tensors of a bucket in one call,
through their addresses (:mod:`descent.kernels.multi`), and is tested against the pure
function in :mod:`descent.functional` that it implements. Numba is optional: without it
:func:`numba_cpu` is False and :func:`descent.optim._backend.select_backend` picks the
``"loop"`` backend instead.
Compiled code is cached on disk (``cache=True``), so only the first run compiles.
"""

from __future__ import annotations

import operator
from functools import partial

import numpy as np
import torch

try:  # pragma: no cover - depends on the environment
    import numba  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

__all__ = ["AVAILABLE", "PARALLEL_MIN", "numba_cpu", "kernel_ok", "partition", "take", "like", "threads_for",
           "addresses", "bucket_plan", "run_elementwise"]

#: Buckets smaller than this run on one thread: waking the thread pool costs more than
#: the work, and on a busy machine (torch's own OpenMP pool spinning) far more.
PARALLEL_MIN = 1 << 16

_DTYPES = (torch.float32, torch.float64)


def numba_cpu(device: torch.device, dtype: torch.dtype) -> bool:
    """Support predicate of the ``"fused"`` (Numba) backend: float32/float64 on CPU."""
    return AVAILABLE and device.type == "cpu" and dtype in _DTYPES


def kernel_ok(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor can be handed to a kernel as a zero-copy view of dense local memory.

    That is: a plain tensor (not a ``DTensor`` or other subclass, whose ``data_ptr()`` is
    not its data), strided layout (not sparse), contiguous, and a first tensor that is not
    empty. Everything else runs the functional. torch's own fused kernels need the same
    check: ``torch.optim.SGD(fused=True)`` on a non-contiguous parameter (a strided view)
    moves the wrong elements (torch 2.13 CPU), and torch never picks fused by default.
    """
    if tensors[0] is None or tensors[0].numel() == 0:
        return False
    for t in tensors:  # a plain loop: this runs for every tensor of every step
        if t is not None and (type(t) not in _PLAIN or t.layout is not _STRIDED or not t.is_contiguous()):
            return False
    return True


def partition(*columns: list[torch.Tensor | None]) -> tuple[list[int], list[int]]:
    """Split positions into those a kernel can take (:func:`kernel_ok` across the columns) and the rest.

    Each column is a list with one entry per tensor of the bucket (parameters,
    gradients, a state tensor...). The usual case, every tensor fit, is checked column by
    column with C-level passes (:func:`_all_fit`, about 0.05 us per tensor and property
    instead of a Python call per row: 170 us -> 120 us per step on the 196 GPT tensors of
    ``benchmarks/step_overhead.py``); otherwise row by row.

    Example:
        >>> a, b = torch.zeros(2, 3), torch.zeros(3, 2).t()
        >>> partition([a, b, torch.zeros(0)], [a, a, a], [None, a, a])
        ([0], [1, 2])
    """
    first = columns[0]
    if (not torch.compiler.is_compiling()  # dynamo traces the plain loop below
            and not any(map(_IS_NONE, first)) and all(_all_fit(c) for c in columns) and all(map(_NUMEL, first))):
        return list(range(len(first))), []
    ok: list[int] = []
    rest: list[int] = []
    for i, row in enumerate(zip(*columns)):
        (ok if kernel_ok(*row) else rest).append(i)
    return ok, rest


def _all_fit(column: list[torch.Tensor | None]) -> bool:
    """Every tensor of ``column`` (``None`` skipped) is a plain, strided, contiguous tensor."""
    ts = [t for t in column if t is not None] if any(map(_IS_NONE, column)) else column
    return _PLAIN_SET.issuperset(map(type, ts)) and _STRIDED_SET.issuperset(map(_LAYOUT, ts)) and all(
        map(torch.Tensor.is_contiguous, ts))


def take(items: list, positions: list[int]) -> list:
    """``[items[i] for i in positions]``: one column of a bucket, restricted to some tensors."""
    return [items[i] for i in positions]


def like(t: torch.Tensor):  # -> numpy.ndarray
    """An empty NumPy array of ``t``'s dtype: tells a kernel which dtype to compile for."""
    return _LIKE[t.dtype]


def threads_for(numel: int) -> None:
    """Use one Numba thread for a small bucket, all of them for a large one.

    With Numba's OpenMP threading layer, ``numba.set_num_threads`` also sets the OpenMP
    default that torch's intra-op pool reads, so a user's ``torch.set_num_threads(1)``
    would silently become 2 after the first kernel step; torch's count is put back
    (Numba passes its own count to each parallel region, so it is unaffected).
    """
    want = 1 if numel < PARALLEL_MIN else numba.config.NUMBA_NUM_THREADS
    if numba.get_num_threads() == want:  # the usual case: as the last bucket left it
        return
    before = torch.get_num_threads()
    numba.set_num_threads(want)
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def addresses(*tensors: list[torch.Tensor] | None) -> np.ndarray:
    """An ``(len(tensors), T)`` int64 array of data pointers, one row per list (0 for ``None``)."""
    count = next(len(ts) for ts in tensors if ts is not None)
    out = np.zeros((len(tensors), count), dtype=np.int64)
    for r, ts in enumerate(tensors):
        if ts is None:
            continue
        if any(map(_IS_NONE, ts)):
            out[r] = [0 if t is None else t.data_ptr() for t in ts]
        else:  # a C-level pass
            out[r] = np.fromiter(map(torch.Tensor.data_ptr, ts), dtype=np.int64, count=count)
    return out


def bucket_plan(params: list[torch.Tensor], row_lengths: tuple[int, ...] | None = None,
                spans: tuple[int, ...] | None = None):  # -> descent.kernels.multi.Plan
    """The cached block/wave plan for these tensors' sizes; also sets the thread count for it."""
    from .multi import plan

    result = plan(tuple(map(_NUMEL, params)), row_lengths, spans)
    threads_for(result.numel)
    return result


def run_elementwise(kernel, columns: list[list[torch.Tensor | None] | None], positions: list[int],
                    scalars: tuple[float, ...], flags: tuple[bool, ...] = ()) -> None:
    """One call of an elementwise multi-tensor kernel over the tensors at ``positions``.

    Calls ``kernel(addresses, sizes, blocks, like, *scalars, *flags)`` with one address row
    per column (parameters first; ``None`` for an unused role) and the scalars cast to the
    tensors' dtype, so float32 arithmetic stays float32.
    """
    every = positions == list(range(len(columns[0])))  # the whole bucket: the columns as they are
    params = columns[0] if every else take(columns[0], positions)
    plan, dtype = bucket_plan(params), like(params[0])
    cast = dtype.dtype.type
    kernel(addresses(*(c if c is None or every else take(c, positions) for c in columns)), plan.sizes, plan.blocks,
           dtype, *(cast(x) for x in scalars), *flags)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_STRIDED = torch.strided
_PLAIN_SET, _STRIDED_SET = frozenset(_PLAIN), frozenset((_STRIDED,))
_IS_NONE = partial(operator.is_, None)
_LAYOUT = operator.attrgetter("layout")
_NUMEL = torch.Tensor.numel
_LIKE = {torch.float32: np.empty(1, dtype=np.float32), torch.float64: np.empty(1, dtype=np.float64)}
