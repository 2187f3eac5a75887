"""Multi-tensor launches: one Numba call steps every tensor of a device/dtype bucket.

Calling a parallel kernel once per tensor costs a thread-pool wake-up per tensor; on a
GPT-shaped list of 196 tensors that overhead was a third of Lion's step. Here a kernel
receives the tensors' addresses instead (:func:`descent.kernels.addresses`), turns each back into a
zero-copy array inside the compiled code (:func:`view`) and walks a :class:`Plan`:

* the tensors are cut into *blocks* of about :data:`BLOCK` elements (whole rows for
  factored tensors), fixed by the shapes alone, so per-block partial sums, and with
  them every result, do not depend on the thread count;
* blocks are grouped into *waves* of whole tensors of about :data:`WAVE` elements; a
  kernel that needs several passes with a per-tensor reduction in between can run all
  its passes over one wave before the next, so the later passes read from cache rather
  than from memory (a parallel region per pass per wave);
* :func:`chunks` cuts the tensors into one run of whole tensors per thread instead: LAMB
  and Adafactor make all their passes over one tensor before the next inside a single
  parallel region (measured on the 2-core machine under load: 5-7x faster than waves,
  whose many regions each wait for every thread), and give a tensor too large for one
  thread its own parallel loops over its blocks.

The caller keeps the tensors alive for the duration of the call (they are the
optimizer's parameters, gradients and state) and passes only contiguous tensors of one
dtype (:func:`descent.kernels.kernel_ok`).
"""

from __future__ import annotations

from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple

import numpy as np
import torch
from numba import carray, njit, types
from numba.extending import intrinsic

__all__ = ["BLOCK", "WAVE", "Plan", "plan", "chunks", "view", "fma", "advance_counters"]

#: Target elements per block: 64 KiB per float32 array, so a block's arrays stay in L2
#: between the passes a kernel makes over one block.
BLOCK = 1 << 14
#: Target elements per wave (4 float32 arrays: 8 MiB, well inside a 32 MiB L3).
WAVE = 1 << 19


@intrinsic
def _pointer(typingctx, address, like):  # pragma: no cover - compile-time
    """Reinterpret an int64 address as a pointer to ``like``'s dtype."""
    ptr = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return ptr(address, like), codegen


@intrinsic
def fma(typingctx, a, b, c):  # pragma: no cover - compile-time
    """``a * b + c`` rounded once (LLVM's ``llvm.fma``), as torch's CPU kernels compute
    ``add(alpha=)``, ``addcmul`` and ``lerp``; vectorizes like any float operation."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@njit(nogil=True, cache=True, inline="always")
def view(address, size, like):  # pragma: no cover - compiled
    """The 1-D array of ``size`` elements of ``like``'s dtype at ``address``."""
    return carray(_pointer(address, like), (size,))


@njit(nogil=True, cache=True)
def large_mask(large, count):  # pragma: no cover - compiled
    """A ``(count,)`` bool array, True at the tensors :func:`chunks` lists as large (the runs skip them)."""
    mask = np.zeros(count, dtype=np.bool_)
    for i in range(large.size):
        mask[large[i]] = True
    return mask


@njit(nogil=True, cache=True)
def _advance(ptrs, like, out):  # pragma: no cover - compiled
    """Add 1 to the one-element counters at ``ptrs`` (``like``'s dtype); ``out[i]`` their new values."""
    one = like.dtype.type(1.0)
    for i in range(ptrs.size):
        c = view(ptrs[i], 1, like)
        c[0] += one
        out[i] = c[0]


_F32 = np.empty(1, dtype=np.float32)


def advance_counters(steps: list[torch.Tensor]) -> list[int] | None:
    """Add 1 to float32 CPU step counters through their addresses, in one compiled loop, and
    return their new values; ``None`` (nothing changed) if one is not a plain float32 CPU
    tensor of one element.

    ``torch._foreach_add_`` on 200 CPU scalars costs about 0.3 ms (one op per tensor), a tenth of
    a whole LAMB step that moves 560 MB; this loop costs a few microseconds (plus reading the
    addresses). The values are the same: float32 ``c + 1``.

    Example:
        >>> steps = [torch.zeros(()), torch.full((), 4.0)]
        >>> advance_counters(steps), [s.item() for s in steps]
        ([1, 5], [1.0, 5.0])
    """
    # column-wise C-level passes (a Python loop over 196 counters with these checks took 40 us)
    if not (_TENSOR.issuperset(map(type, steps)) and _FLOAT32.issuperset(map(_DTYPE, steps))
            and all(map(_IS_CPU, steps)) and _ONE.issuperset(map(torch.Tensor.numel, steps))):
        return None
    out = np.empty(len(steps))
    _advance(np.array(list(map(torch.Tensor.data_ptr, steps)), dtype=np.int64), _F32, out)
    return out.astype(np.int64).tolist()


_TENSOR, _FLOAT32, _ONE = frozenset((torch.Tensor,)), frozenset((torch.float32,)), frozenset((1,))
_DTYPE, _IS_CPU = attrgetter("dtype"), attrgetter("is_cpu")


class Plan(NamedTuple):
    """Blocks and waves over a list of tensors (see the module docstring).

    Attributes:
        sizes: ``(T,)`` elements per tensor.
        blocks: ``(B, 3)`` rows ``(tensor, start, stop)`` in elements, in tensor order.
        waves: ``(W + 1,)`` block indices; wave ``w`` is ``blocks[waves[w]:waves[w + 1]]``
            and holds whole tensors.
        offsets: ``(B,)`` where each block starts inside its wave (elements), for
            wave-sized scratch buffers.
        wave_sizes: ``(W,)`` elements per wave.
        numel: total elements.
    """

    sizes: np.ndarray
    blocks: np.ndarray
    waves: np.ndarray
    offsets: np.ndarray
    wave_sizes: np.ndarray
    numel: int

    def scratch_numel(self, limit: int) -> int:
        """Elements of a scratch buffer that holds any wave of at most ``limit`` elements (0 if none)."""
        small = self.wave_sizes[self.wave_sizes <= limit]
        return int(small.max()) if small.size else 0


@lru_cache(maxsize=256)
def plan(sizes: tuple[int, ...], row_lengths: tuple[int, ...] | None = None,
         spans: tuple[int, ...] | None = None, block: int | None = None, wave: int | None = None) -> Plan:
    """The :class:`Plan` for tensors of ``sizes`` elements.

    Args:
        sizes: elements per tensor (zero-size tensors get no block).
        row_lengths: per tensor, a row length that blocks must not split (default 1);
            a block then holds whole rows, at least one.
        spans: per tensor, a length whose multiples no block crosses (default: the
            size), e.g. one matrix of a batch of matrices.
        block, wave: target elements per block and per wave (default :data:`BLOCK`,
            :data:`WAVE`).

    Example:
        >>> p = plan((40000, 10), block=16384, wave=50000)
        >>> p.blocks.tolist(), p.waves.tolist()
        ([[0, 0, 16384], [0, 16384, 32768], [0, 32768, 40000], [1, 0, 10]], [0, 4])
    """
    block = BLOCK if block is None else block
    wave = WAVE if wave is None else wave
    rows = row_lengths or (1,) * len(sizes)
    blocks: list[tuple[int, int, int]] = []
    waves = [0]
    in_wave = 0
    for t, (n, r) in enumerate(zip(sizes, rows)):
        if n == 0:
            continue
        if in_wave and in_wave + n > wave:
            waves.append(len(blocks))
            in_wave = 0
        step = max(1, block // r) * r
        span = spans[t] if spans else n
        for start in range(0, n, span):
            stop = min(n, start + span)
            blocks += [(t, lo, min(stop, lo + step)) for lo in range(start, stop, step)]
        in_wave += n
    if len(blocks) > waves[-1]:
        waves.append(len(blocks))
    table = np.asarray(blocks, dtype=np.int64).reshape(-1, 3)
    lengths = table[:, 2] - table[:, 1]
    offsets = np.zeros(len(blocks), dtype=np.int64)
    wave_sizes = np.zeros(len(waves) - 1, dtype=np.int64)
    for w, (w0, w1) in enumerate(zip(waves[:-1], waves[1:])):
        offsets[w0:w1] = np.cumsum(lengths[w0:w1]) - lengths[w0:w1]
        wave_sizes[w] = lengths[w0:w1].sum()
    return Plan(np.asarray(sizes, dtype=np.int64), table, np.asarray(waves, dtype=np.int64), offsets, wave_sizes,
                int(sum(sizes)))


def chunks(sizes: tuple[int, ...], parts: int, row_lengths: tuple[int, ...] | None = None,
           spans: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each tensor's first block (in :func:`plan`'s table), the tensors too large to leave to
    one thread, and a cut of the others into ``parts`` runs of whole tensors with about
    equal elements (one per thread).

    A kernel that runs its passes tensor by tensor inside one parallel loop over the runs
    (LAMB, Adafactor) needs one parallel region per call instead of several per wave; a
    *large* tensor (more than half a thread's share of the bucket, and more than one block)
    gets its own parallel loops over its blocks instead, so one big tensor keeps every
    thread busy. ``row_lengths`` and ``spans`` are :func:`plan`'s.

    Returns:
        ``first`` ``(T + 1,)``: tensor ``t``'s blocks are ``first[t]:first[t + 1]``;
        ``large`` ``(L,)``: the large tensors, in order;
        ``bounds`` ``(parts + 1,)``: run ``c`` holds tensors ``bounds[c]:bounds[c + 1]``
        (large ones among them are skipped there).

    Example:
        >>> first, large, bounds = chunks((40000, 10, 0, 30000, 5), 2)
        >>> first.tolist(), large.tolist(), bounds.tolist()
        ([0, 3, 4, 4, 6, 7], [0, 3], [0, 2, 5])
    """
    return _chunks(sizes, parts, row_lengths, spans, BLOCK, WAVE)


@lru_cache(maxsize=256)
def _chunks(sizes: tuple[int, ...], parts: int, row_lengths: tuple[int, ...] | None, spans: tuple[int, ...] | None,
            block: int, wave: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = plan(sizes, row_lengths, spans, block, wave).blocks
    first = np.searchsorted(table[:, 0], np.arange(len(sizes) + 1)).astype(np.int64)
    total = sum(sizes)
    large = [t for t, n in enumerate(sizes) if 2 * parts * n > total and first[t + 1] - first[t] > 1]
    ends = np.cumsum([0 if t in large else n for t, n in enumerate(sizes)], dtype=np.int64)
    rest = int(ends[-1]) if len(sizes) else 0
    bounds = [0]
    for c in range(1, parts):  # the tensor boundary nearest to each c/parts of the elements
        target = c * rest / parts
        cut = int(np.searchsorted(ends, target)) if rest else 0
        if 0 < cut < len(sizes) and abs(ends[cut - 1] - target) < abs(ends[cut] - target):
            cut -= 1
        bounds.append(max(bounds[-1], min(len(sizes), cut + 1)))
    bounds.append(len(sizes))
    return first, np.asarray(large, dtype=np.int64), np.asarray(bounds, dtype=np.int64)
