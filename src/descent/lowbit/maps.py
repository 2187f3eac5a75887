"""Code maps for blockwise quantization, and the lookup tables that quantize in O(1).

A code map is a sorted float32 tensor of ``2**bits`` values in ``[-1, 1]``; a value
``x`` (already divided by its block's absmax) is stored as the index of the nearest
entry. "Nearest" is defined through the midpoints between neighbouring entries: the
code of ``x`` is the number of midpoints strictly below ``x``
(``torch.bucketize(x, mids)``, :func:`midpoints`), so a tie goes to the lower entry. In a map
whose first entry is 0 (the 8-bit second moment's) the first midpoint is 0 itself: a positive
value is never stored as 0 (see :func:`midpoints`). Every path
(the torch reference and the Numba kernels) uses exactly this rule, except for 4-bit
signed maps, rounded stochastically between the two neighbouring entries
(:func:`descent.lowbit.quant.encode`).

Maps (Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"; Li et
al., 2023, "Memory Efficient Optimizers with 4-bit States"):

* first moment, signed dynamic map (``dynamic_map(True, 8)``, bitsandbytes'
  ``create_dynamic_map(signed=True)``; 4-bit: 3 exponent bits, as torchao, ``-0.8875 ... 1``),
  4-bit codes rounded stochastically with a hashed threshold (:func:`descent.lowbit.quant.encode`).
  Rounded to nearest, a 4-bit first moment sticks (``0.9 * m`` rounds back to ``m``, so it does
  not decay): +15 % final validation loss against fp32 on digits-cnn (100 steps, 3 seeds, every
  tensor 4-bit), +0.8 to +3.1 % with the stochastic rounding (six rounding streams, mean +1.4 %);
  QLoRA's normal-float map (:func:`normal_map`, with -1) gave -3.2 % with it (thresholds without
  the step number) and +5 % rounded to nearest
  (``benchmarks/lowbit_quality.py``, ``benchmarks/lowbit_ablation.py``);
* second moment, unsigned dynamic map (8-bit) or, for 4 bits, the square map
  ``(1/16)**2, (2/16)**2, ..., 1`` (:func:`square_map`): no zero, since a second moment
  quantized to 0 would make the update explode (the "zero-point problem" of Li et al.),
  and linear in sqrt(v), the quantity the update divides by. Li et al. keep the
  linear map ``1/16, ..., 1`` for :math:`v` and normalize it by rank-1 (row and column)
  maxima; with the per-block absmax that keeps states shard-independent, the linear map
  gave +29 % (100 steps) and +20 % (300 steps) final validation loss against fp32 on
  digits-cnn (3 seeds, every tensor 4-bit), the square map +15 % and -14 %
  (``benchmarks/lowbit_quality.py --task digits-cnn --min-numel 0 --steps 100``).
"""

from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["dynamic_map", "normal_map", "linear_map", "square_map", "code_map", "midpoints", "Lookup", "lookup",
           "dynamic_layout", "SHIFT"]

#: Right shift applied to the bits of a float32 magnitude to index the lookup table
#: (8 mantissa bits kept, so at most one midpoint falls in a bucket).
SHIFT = 15


def dynamic_map(signed: bool = True, bits: int = 8) -> torch.Tensor:
    """The dynamic (exponent + linear fraction) code map of Dettmers et al. (2022).

    For 8 bits this equals bitsandbytes' ``create_dynamic_map(signed)`` (7 exponent
    bits); for 4 bits the exponent has 3 bits (torchao's 4-bit first moment).

    Args:
        signed: include negative values (first moment) or not (second moment).
        bits: 8 or 4.

    Returns:
        A sorted float32 tensor of ``2**bits`` entries with 0 and 1 among them.

    Example:
        >>> m = dynamic_map(True, 4)
        >>> m.numel(), float(m.min()) < 0, float(m.max())
        (16, True, 1.0)
    """
    if bits not in (4, 8):
        raise ValueError(f"Invalid bits: {bits} (must be 4 or 8)")
    exponent_bits = 7 if bits == 8 else 3
    non_sign = bits - 1
    data: list[float] = []
    for i in range(exponent_bits):
        items = 2 ** (i + non_sign - exponent_bits) + 1 if signed else 2 ** (i + non_sign - exponent_bits + 1) + 1
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = ((bounds[:-1] + bounds[1:]) / 2.0).tolist()
        scale = 10 ** (-(exponent_bits - 1) + i)
        data += [scale * m for m in means]
        if signed:
            data += [-scale * m for m in means]
    data += [0.0, 1.0]
    data += [0.0] * (2**bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def normal_map() -> torch.Tensor:
    """The 4-bit normal-float map (NF4) of QLoRA (Dettmers et al., 2023), an alternative 4-bit first-moment map.

    Quantiles of a standard normal distribution at probabilities evenly spaced from 0.9677083
    down to 0.5 (excluded), 8 above 0 and 7 below, with 0, scaled to [-1, 1]: -1 and 1 are
    both entries (so a block's absmax element is exact whatever its sign), the entries are
    densest where most values of ``m / absmax`` fall. Computed in float64 (the standard
    library's ``NormalDist``), rounded to float32. ``state_bits=4`` used it for first moments
    for one commit (13e44bd); states saved then keep it on load.

    Example:
        >>> q = normal_map()
        >>> q.numel(), float(q[0]), float(q[7]), float(q[-1]), round(float(q[8]), 4)
        (16, -1.0, 0.0, 1.0, 0.0796)
    """
    normal, top = NormalDist(), 0.9677083
    above = [normal.inv_cdf(top - (top - 0.5) * k / 8) for k in range(8)]
    below = [-normal.inv_cdf(top - (top - 0.5) * k / 7) for k in range(7)]
    values = sorted([*above, 0.0, *below])
    return torch.tensor([v / values[-1] for v in values], dtype=torch.float64).to(torch.float32)


def linear_map(bits: int = 4) -> torch.Tensor:
    """``1/2**bits, 2/2**bits, ..., 1``: the unsigned linear map without zero (Li et al.'s 4-bit second moment).

    Example:
        >>> linear_map(4)[:3]
        tensor([0.0625, 0.1250, 0.1875])
    """
    n = 2**bits
    return torch.arange(1, n + 1, dtype=torch.float32) / n


def square_map(bits: int = 4) -> torch.Tensor:
    """``(1/2**bits)**2, (2/2**bits)**2, ..., 1``: the 4-bit second-moment map (no zero, linear in the square root).

    Example:
        >>> square_map(4)[:3] * 256
        tensor([1., 4., 9.])
    """
    return linear_map(bits) ** 2


@lru_cache(maxsize=None)
def _map(signed: bool, bits: int) -> torch.Tensor:
    return dynamic_map(signed, bits) if (signed or bits == 8) else square_map(bits)


def code_map(signed: bool, bits: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The shared code map of a state: signed (first moment) or unsigned (second), 8 or 4 bits.

    The same tensor object is returned on each call for a device, so the states of all
    parameters share one map (saved once by ``torch.save``).
    """
    return _device_map(signed, bits, str(torch.device(device)))


@lru_cache(maxsize=None)
def _device_map(signed: bool, bits: int, device: str) -> torch.Tensor:
    return _map(signed, bits).to(device)


def midpoints(qmap: torch.Tensor) -> torch.Tensor:
    """The thresholds between a map's codes: the midpoints of neighbouring entries, except that a map whose
    first entry is 0 has 0 as its first threshold.

    So in the 8-bit second-moment map (0, then 3.25e-7, ...) every positive value gets at least the
    smallest positive entry: rounded to nearest, a second moment below 1.6e-7 of its block's absmax
    would be stored as 0, and an element whose gradient then stops would step ``m / eps`` (thousands of
    ``lr``; bitsandbytes' 8-bit Adam does that). Rounded up instead, the denominator is at least the
    true one. Computed on the map's device without a host sync.

    Example:
        >>> q = code_map(False, 8)
        >>> float(midpoints(q)[0]), float(midpoints(code_map(True, 8))[127]) > 0
        (0.0, True)
    """
    q = qmap.to(torch.float32)
    mids = (q[:-1] + q[1:]) / 2
    return torch.cat([torch.where(q[:1] == 0, torch.zeros_like(mids[:1]), mids[:1]), mids[1:]])


class Lookup(NamedTuple):
    """Arrays the Numba kernels quantize with (see :func:`lookup`).

    Attributes:
        qmap: the code map (float32).
        mids: the thresholds between entries (float32, ``K - 1`` entries, :func:`midpoints`).
        table: uint8 code of the lowest value of each bucket, ``2 * span`` entries:
            positive values first, then negative ones, each indexed by the magnitude's bits.
        thr: float32 midpoint inside each bucket (``+inf`` where there is none).
        key_min: magnitude key (``bits(|x|) >> SHIFT``) of ``table[0]``.
        span: keys per sign.
    """

    qmap: np.ndarray
    mids: np.ndarray
    table: np.ndarray
    thr: np.ndarray
    key_min: int
    span: int


#: Magnitudes below ``2**-24`` share the first bucket and those from 2 up the last one.
_LOW, _HIGH = 2.0**-24, 2.0


def _key(magnitude: float) -> int:
    return int(np.array([magnitude], np.float32).view(np.int32)[0]) >> SHIFT


def lookup(qmap: torch.Tensor) -> Lookup:
    """The O(1) quantization tables of a map, cached by its values.

    A normalized float32 value ``x`` has the key ``k = clamp(bits(|x|) >> SHIFT)``;
    with ``j = k - key_min + span * (x < 0)`` the code is ``table[j] + (x > thr[j])``:
    the code of the lowest value with that key and sign, plus one past the bucket's
    midpoint, if it has one. Two independent loads, no search; the result equals
    ``torch.bucketize(x, mids)`` (checked when the table is built).
    """
    return _lookup(tuple(float(v) for v in qmap.detach().cpu().float().tolist()))


@lru_cache(maxsize=16)
def _lookup(values: tuple[float, ...]) -> Lookup:
    qmap = np.asarray(values, dtype=np.float32)
    mids = midpoints(torch.from_numpy(qmap)).numpy()
    key_min, key_max = _key(_LOW), _key(_HIGH)
    keys = np.arange(key_min, key_max + 1, dtype=np.int64)
    lo = (keys << SHIFT).astype(np.int32).view(np.float32).astype(np.float64)
    hi = ((keys + 1) << SHIFT).astype(np.int32).view(np.float32).astype(np.float64)
    lo[0], hi[-1] = 0.0, np.inf  # the clamped end buckets
    mids64 = mids.astype(np.float64)
    count = lambda x: np.searchsorted(mids64, x, side="left")  # noqa: E731
    pos_first, pos_last = count(lo), count(np.nextafter(hi, 0))
    neg_first, neg_last = count(-hi), count(-lo)
    neg_first[-1] = 0
    if max(int((pos_last - pos_first).max()), int((neg_last - neg_first).max())) > 1 or count(-0.0) != count(0.0):
        raise ValueError("code map too dense for the lookup table")  # pragma: no cover
    first = np.concatenate([pos_first, neg_first])
    last = np.concatenate([pos_last, neg_last])
    padded = np.append(mids, np.float32(np.inf)).astype(np.float32)
    thr = np.where(last > first, padded[np.minimum(first, len(mids))], np.float32(np.inf)).astype(np.float32)
    return Lookup(qmap, mids, first.astype(np.uint8), thr, key_min, len(keys))


def dynamic_layout(qmap: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """The decades of an 8-bit dynamic map (:func:`dynamic_map`), for quantizing by arithmetic.

    Such a map holds 0, then decades ``d = 0..6`` of ``2**(d + e)`` equally spaced entries
    ``10**(d - 6) * (0.1 + 0.9 * (k + 0.5) / 2**(d + e))`` (``e`` = 0 signed, 1 unsigned; a
    signed map mirrors them below 0), then 1. Returns ``(cross, ten, zero, e)``: the float32
    midpoints below each decade's first entry and below 1 (8 values), ``10**(6 - d)`` (float32),
    the code of 0 and ``e``; ``None`` for any other map. The kernel checks the arithmetic
    against the table on every midpoint's neighbourhood before using it
    (:func:`descent.kernels.lowbit_encode._arithmetic`).

    Example:
        >>> cross, ten, zero, e = dynamic_layout(dynamic_map(False, 8))
        >>> zero, e, float(ten[6])
        (0, 1, 1.0)
    """
    q = qmap.detach().cpu().float().numpy()
    if q.size != 256:
        return None
    e = 0 if q[0] < 0 else 1
    zero = int(np.searchsorted(q, 0.0))
    starts = zero + 1 + np.cumsum([0] + [2 ** (d + e) for d in range(7)])
    if q[zero] != 0 or starts[-1] != 255 or q[255] != 1.0 or (e == 0 and zero != 127):
        return None
    for d in range(7):
        want = 10.0 ** (d - 6) * (0.1 + 0.9 * (np.arange(2 ** (d + e)) + 0.5) / 2 ** (d + e))
        if not np.allclose(q[starts[d]:starts[d + 1]], want, rtol=1e-5, atol=0):
            return None
    cross = lookup(qmap).mids[np.append(starts[:7], 255) - 1]
    ten = np.array([10.0 ** (6 - d) for d in range(7)], dtype=np.float32)
    return cross, ten, zero, e
