"""Shared pieces of the Triton kernels: rounding to the storage dtype, checks, cached device tables.

A bucket's tables (tensor addresses, sizes, blocks) depend only on the tensors'
addresses and sizes, so they are built once, copied to the device once and cached: a
later step with the same tensors launches without any host-to-device copy, which is
what lets a step be captured in a CUDA graph (after one warm-up step).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import DTYPES

__all__ = ["TL", "LAUNCH", "round_to", "exact", "store", "positions", "cached_ints", "pointers_key", "sign_of",
           "address_rows", "block_table", "to_device", "wide", "scalars"]

#: torch dtype -> Triton dtype of the stored values.
TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

#: Launch options: no contraction of a*b+c into a fused multiply-add (torch's eager ops
#: round each product), so an elementwise kernel equals the functional bit for bit.
LAUNCH = dict(num_warps=4, enable_fp_fusion=False)

_CACHE: OrderedDict[tuple, list[Tensor]] = OrderedDict()
_CACHE_SIZE = 64


@triton.jit
def round_to(x, DT: tl.constexpr):
    """``x`` (float32) rounded to ``DT`` to nearest even, returned as float32.

    bfloat16 is rounded with integer operations rather than ``.to(tl.bfloat16)``: the
    result is the same on a GPU, and Triton 3.9's interpreter truncates that cast.
    """
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        up = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        up = tl.where(x != x, bits | 0x00400000, up)  # NaN stays a (quiet) NaN
        return up.to(tl.float32, bitcast=True)
    elif DT == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def exact(r, DT: tl.constexpr):
    """``r`` (float32, already representable in ``DT``: see :func:`round_to`) as ``DT``.

    bfloat16 goes through its bits: the interpreter's float cast flushes subnormals.
    """
    if DT == tl.bfloat16:
        return (r.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return r.to(DT)


@triton.jit
def store(ptr, x, mask, DT: tl.constexpr):
    """Store float32 ``x`` as ``DT``, rounded once to nearest even (:func:`round_to`, :func:`exact`;
    written out here because each nested call costs the interpreter a re-patch of triton.language)."""
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        up = tl.where(x != x, bits | 0x00400000, bits + 0x7FFF + ((bits >> 16) & 1))
        tl.store(ptr, (up >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(DT), mask=mask)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on ``device`` without stalling the host: through pinned memory on CUDA
    (a pageable copy would wait for the stream), plainly elsewhere (the interpreter's CPU tensors)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def wide(value: float | Tensor, device: torch.device) -> float | Tensor:
    """A hyperparameter ready for host-or-device arithmetic: a tensor becomes a float64 scalar on
    ``device`` (so ``1 - lr * wd`` is computed as the host computes it, in float64), a number stays."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=torch.float64).reshape(())
    return value


def scalars(values: Sequence[float | Tensor], device: torch.device, capturable: bool = False) -> Tensor:
    """The kernel's scalar arguments as one float32 tensor on ``device`` (each rounded once from float64).

    Without ``capturable`` (and with no tensor among ``values``) the numbers are gathered on the
    host and copied once; with it every value is made on the device (a fill, or the tensor's own
    value), so nothing crosses between host and device and a CUDA graph can capture the step
    (a number is then a constant of the graph, a tensor is read at each replay).

    Example:
        >>> scalars([0.5, torch.tensor(2.0)], torch.device("cpu"))
        tensor([0.5000, 2.0000])
    """
    if not capturable and not any(isinstance(v, Tensor) for v in values):
        return to_device(torch.tensor([float(v) for v in values], dtype=torch.float64).float(), device)
    parts = [v.to(device=device, dtype=torch.float64).reshape(()) if isinstance(v, Tensor)
             else torch.full((), float(v), dtype=torch.float64, device=device) for v in values]
    return torch.stack(parts).float()


def sign_of(maximize: bool) -> float:
    """The factor applied to the gradient: -1 to ascend."""
    return -1.0 if maximize else 1.0


def positions(params: Sequence[Tensor], columns: dict[str, Sequence[Tensor | None] | None],
              same_shape: Sequence[str] = ()) -> list[int]:
    """Check a bucket and return the positions of its non-empty parameters.

    Args:
        params: the parameters.
        columns: role name -> one entry per parameter (``None`` entries and a ``None``
            column are allowed: an unused state).
        same_shape: roles whose tensors must have their parameter's number of elements.

    Raises:
        ValueError: a column of another length, a tensor on another device or of
            another dtype, or a non-contiguous tensor (the kernels read raw memory).
    """
    if not params:
        return []
    device, dtype = params[0].device, params[0].dtype
    if dtype not in DTYPES:
        raise ValueError(f"Invalid dtype: {dtype} (the Triton kernels take {', '.join(map(str, DTYPES))})")
    for name, col in {"params": params, **columns}.items():
        if col is None:
            continue
        if len(col) != len(params):
            raise ValueError(f"Invalid {name}: {len(col)} tensors for {len(params)} parameters")
        for i, t in enumerate(col):
            if t is None:
                continue
            if t.device != device or t.dtype != dtype:
                raise ValueError(f"Invalid {name}[{i}]: {t.dtype} on {t.device} (the bucket is {dtype} on {device})")
            if not t.is_contiguous():
                raise ValueError(f"Invalid {name}[{i}]: not contiguous (stride {t.stride()}); pass .contiguous() "
                                 "tensors or use another backend")
            if name in same_shape and t.numel() != params[i].numel():
                raise ValueError(f"Invalid {name}[{i}]: {t.numel()} elements for a parameter of {params[i].numel()}")
    return [i for i, p in enumerate(params) if p.numel() > 0]


def pointers_key(*columns: Sequence[Tensor | None] | None) -> tuple:
    """A hashable key of the tensors' addresses and sizes (0 for a missing one)."""
    key: list = []
    for col in columns:
        if col is None:
            key.append(None)
        else:
            key.append(tuple((0, 0) if t is None else (t.data_ptr(), t.numel()) for t in col))
    return tuple(key)


def cached_ints(key: tuple, device: torch.device, build: Callable[[], list[list[int]]]) -> list[Tensor]:
    """int64 device tensors from ``build()`` (lists of ints), built and copied once per ``key``."""
    full = (device, key)
    hit = _CACHE.get(full)
    if hit is not None:
        _CACHE.move_to_end(full)
        return hit
    parts = build()
    flat = torch.tensor([x for part in parts for x in part], dtype=torch.int64).to(device)
    out, start = [], 0
    for part in parts:
        out.append(flat[start:start + len(part)])
        start += len(part)
    _CACHE[full] = out
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def address_rows(columns: Sequence[Sequence[Tensor | None] | None], count: int) -> list[int]:
    """Role-major addresses: ``columns[r][t]`` at ``r * count + t`` (0 for a missing tensor)."""
    out: list[int] = []
    for col in columns:
        out += [0] * count if col is None else [0 if t is None else t.data_ptr() for t in col]
    return out


def block_table(sizes: Sequence[int], block: int) -> list[int]:
    """Flat ``(tensor, start)`` pairs cutting each tensor into blocks of ``block`` elements.

    Example:
        >>> block_table([5, 0, 3], 4)
        [0, 0, 0, 4, 2, 0]
    """
    out: list[int] = []
    for t, n in enumerate(sizes):
        for start in range(0, n, block):
            out += [t, start]
    return out
