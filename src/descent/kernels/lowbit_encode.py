"""Quantization of 8-bit dynamic-map states by arithmetic, for :mod:`descent.kernels.lowbit`.

:func:`_encode` computes the codes of a block in one loop that vectorizes, where the
table path (:func:`descent.lowbit.maps.lookup`) needs a scalar loop of two loads per value;
:func:`_arithmetic` enables it for a map only after checking it against the table.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic

from ..lowbit.maps import dynamic_layout, lookup

_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")


@intrinsic
def _as_float(typingctx, bits):  # pragma: no cover - compile-time
    """The float32 (float64) whose bit pattern is the int32 (int64) ``bits``."""
    if bits not in (types.int32, types.int64):
        return None
    out = types.float32 if bits == types.int32 else types.float64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(out))

    return out(bits), codegen


@intrinsic
def _as_bits(typingctx, x):  # pragma: no cover - compile-time
    """The uint32 bit pattern of the float32 ``x``."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return types.uint32(x), codegen


#: Half-width (in units of a decade's entry spacing) of the band around each midpoint where
#: :func:`_encode` gives up and the block takes the table path.
_BAND = np.float32(2.0**-15)


@njit(inline="always", **_OPTS)
def _encode(vals, n, scale, codes, off, cross, ten, zero, e):  # pragma: no cover - compiled
    """8-bit codes of ``float32(vals[:n] / scale)`` for a dynamic map, by arithmetic in one loop that
    vectorizes (32-bit lanes): the decade ``d`` from compares with the midpoint below its first entry
    (exact), the entry from the position ``u = (|x| 10**(6-d) - 0.1) 2**(d+e) / 0.9`` in it. True when
    some ``u`` fell within ``_BAND`` of an integer in ``[1, 2**(d+e) - 1]`` (a midpoint): the table
    must write the codes then.

    A negative value counts the midpoints ``<= |x|`` (its mirror's tie rule), as the midpoints
    ``< nextafter(|x|, inf)``. Monotone in ``|x|`` and equal to the table on a band around every
    midpoint (checked when the tables are built, :func:`_arithmetic`), so equal to it everywhere.
    """
    x0, x1, x2, x3, x4, x5, x6, top = cross[0], cross[1], cross[2], cross[3], cross[4], cross[5], cross[6], cross[7]
    t0, t1, t2, t3, t4, t5, t6 = ten[0], ten[1], ten[2], ten[3], ten[4], ten[5], ten[6]
    f0, f1, z, ef = np.float32(0.0), np.float32(1.0), np.float32(zero), np.float32(e)
    k9, tenth, half = np.float32(1 / 0.9), np.float32(0.1), np.float32(0.5)
    lo, hi, bad = _BAND, np.float32(1.0) - _BAND, np.int32(0)
    for k in range(n):
        x = np.float32(vals[k] / scale)
        neg = x < f0
        a = _as_float(np.int32(np.int32(_as_bits(abs(x))) + np.int32(neg)))
        d = np.int32(np.int32(a > x0) + np.int32(a > x1) + np.int32(a > x2) + np.int32(a > x3) + np.int32(a > x4)
                     + np.int32(a > x5) + np.int32(a > x6))
        f = t6 if a > x6 else t5 if a > x5 else t4 if a > x4 else t3 if a > x3 else t2 if a > x2 else (
            t1 if a > x1 else t0)
        c = _as_float(np.int32((max(d, np.int32(1)) + np.int32(126 + e)) << 23))  # 2**(d - 1 + e)
        u = (a * f - tenth) * (c * k9)
        w = np.floor(u)
        r = u - w
        inner = np.int32(d > 0) & np.int32(u > half) & np.int32(u < c - half)  # a midpoint at round(u)
        bad = max(bad, np.int32(inner & np.int32(np.int32(r < lo) | np.int32(r > hi))))
        pos = (c - ef + min(max(w, f0), c - f1) if d > 0 else f0) + (f1 if a > top else f0)
        codes[off + k] = np.uint8(np.int32(z - min(pos, z) if neg else z + pos))
    return bad != 0


@njit(**_OPTS)
def _encode_agrees(xs, want, edge, cross, ten, zero, e):  # pragma: no cover - compiled
    """Each of ``xs`` encoded alone: table's code ``want`` or unsure (never unsure where ``edge``)."""
    out = np.empty(1, np.uint8)
    for k in range(xs.size):
        unsure = _encode(xs[k:k + 1], 1, np.float32(1.0), out, 0, cross, ten, zero, e)
        if (unsure and edge[k]) or (not unsure and out[0] != want[k]):
            return False
    return True


@lru_cache(maxsize=16)
def _arithmetic(values: tuple[float, ...]) -> tuple:
    """``(cross, ten, zero, e, usable)`` for :func:`_encode`: usable when the map is a dynamic 8-bit
    map and the arithmetic gives the table's code (or is unsure) on +-1024 ulps around every
    midpoint, and is sure at those bands' ends: with monotonicity, equal everywhere else."""
    qmap = np.asarray(values, dtype=np.float32)
    layout = dynamic_layout(torch.from_numpy(qmap))
    if layout is None:
        return np.zeros(8, np.float32), np.ones(7, np.float32), np.int32(0), np.int32(0), False
    cross, ten, zero, e = layout
    dyn = (cross, ten, np.int32(zero), np.int32(e))
    mids = lookup(torch.from_numpy(qmap)).mids
    steps = np.arange(-1024, 1025, dtype=np.int32)
    bits = (np.abs(mids).view(np.int32)[:, None] + steps[None, :]).reshape(-1)
    xs = np.concatenate([bits.view(np.float32), -bits.view(np.float32),
                         np.array([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 1e-45, -1e-45], np.float32)])
    edge = np.zeros((mids.size, steps.size), bool)
    edge[:, [0, -1]] = True
    edge = np.concatenate([edge.reshape(-1), edge.reshape(-1), np.zeros(8, bool)])
    want = np.searchsorted(mids, xs, side="left").astype(np.uint8)
    return (*dyn, bool(_encode_agrees(xs, want, edge, *dyn)))
