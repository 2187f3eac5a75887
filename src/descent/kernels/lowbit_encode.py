"""Quantization of 8-bit dynamic-map states by arithmetic, for :mod:`descent.kernels.lowbit`.

:func:`_encode` computes the codes of a block in one loop that vectorizes, where the
table path (:func:`descent.lowbit.maps.lookup`) needs a scalar loop of two loads per value;
:func:`_arithmetic` enables it for a map only after checking it against the table.
:func:`_encode16` is the same arithmetic on 16 lanes written as LLVM IR, the decade read from an
octave table by AVX-512 permutes (scalar loads on other CPUs); :func:`_encode_fast` runs a block
with it where :func:`_vector` checked it the same way. :func:`_encode4` gives the codes of 4-bit maps by
compares with their 16 entries.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from llvmlite import ir
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
    return (*dyn, bool(_encode_agrees(*_band_values(qmap), *dyn)))


def _band_values(qmap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, want, edge)``: +-1024 ulps around every midpoint of ``qmap`` (and +-0, +-1, +-1.5, +-1e-45),
    their table codes, and whether each is at a band's end (where the arithmetic must be sure)."""
    mids = lookup(torch.from_numpy(qmap)).mids
    steps = np.arange(-1024, 1025, dtype=np.int32)
    bits = np.maximum(np.abs(mids).view(np.int32)[:, None] + steps[None, :], 0).reshape(-1)  # a midpoint 0: from +0
    xs = np.concatenate([bits.view(np.float32), -bits.view(np.float32),
                         np.array([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 1e-45, -1e-45], np.float32)])
    edge = np.zeros((mids.size, steps.size), bool)
    edge[:, [0, -1]] = True
    edge = np.concatenate([edge.reshape(-1), edge.reshape(-1), np.zeros(8, bool)])
    return xs, np.searchsorted(mids, xs, side="left").astype(np.uint8), edge


# ------------------------------------------------------------ 16 values at a time, the decade from a permute
#: Set to True to compile :func:`_encode16`'s table lookups as scalar loads even on an AVX-512 CPU (tests).
FORCE_SCALAR16 = [False]

_I32x16 = ir.VectorType(ir.IntType(32), 16)
_F32x16 = ir.VectorType(ir.FloatType(), 16)


def _target_has(context, *features: str) -> bool:  # noqa: ANN001 - a Numba target context
    """Whether Numba compiles for a CPU with all of ``features`` (``"+avx512f"``, ...)."""
    have = (getattr(context.codegen(), "_tm_features", "") or "").split(",")
    return all(f in have for f in features)


def _splat(builder: ir.IRBuilder, value: ir.Value, n: int = 16) -> ir.Value:
    vty = ir.VectorType(value.type, n)
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _lookup32(builder: ir.IRBuilder, ptr: ir.Value, idx: ir.Value, permute: bool) -> ir.Value:
    """``ptr[idx]`` for a 32-entry float32 or int32 table and 16 indices in [0, 31]: one AVX-512
    ``vpermi2ps``/``vpermi2d`` on the table's two halves, or 16 scalar loads."""
    ety = ptr.type.pointee
    vty = ir.VectorType(ety, 16)
    if permute:
        halves = builder.bitcast(ptr, vty.as_pointer())
        lo, hi = (builder.load(builder.gep(halves, [ir.Constant(ir.IntType(64), h)]), align=4) for h in (0, 1))
        name = "llvm.x86.avx512.vpermi2var." + ("ps" if isinstance(ety, ir.FloatType) else "d") + ".512"
        fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(vty, [vty, _I32x16, vty]))
        return builder.call(fn, [lo, idx, hi])
    out = ir.Constant(vty, None)
    for i in range(16):
        lane = ir.Constant(ir.IntType(32), i)
        j = builder.zext(builder.extract_element(idx, lane), ir.IntType(64))
        out = builder.insert_element(out, builder.load(builder.gep(ptr, [j])), lane)
    return out


def _vcall(builder: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(args[0].type, [a.type for a in args]))
    return builder.call(fn, list(args))


def _encode16_ir(builder, x, xc, dlo, ften, top, z, e, ebase, permute):  # noqa: ANN001, ANN202 - IR values
    """:func:`_encode`'s per-value arithmetic on 16 float32 lanes ``x``: ``(codes as <16 x i32>, unsure <16 x i1>)``.
    Same operations in the same order, except the decade: ``d = dlo[i] + (a > xc[i])`` with ``i`` the clamped
    exponent of ``a`` (each binary octave holds at most one decade boundary; checked in :func:`_vector`)."""
    fc = lambda v: ir.Constant(_F32x16, [float(v)] * 16)  # noqa: E731
    ic = lambda v: ir.Constant(_I32x16, [int(v)] * 16)  # noqa: E731
    neg = builder.fcmp_ordered("<", x, fc(0.0))
    ai = builder.add(builder.bitcast(_vcall(builder, "llvm.fabs.v16f32", x), _I32x16), builder.zext(neg, _I32x16))
    a = builder.bitcast(ai, _F32x16)
    i = builder.sub(builder.lshr(ai, ic(23)), _splat(builder, ebase))
    i = builder.select(builder.icmp_signed("<", i, ic(0)), ic(0), i)
    i = builder.select(builder.icmp_signed(">", i, ic(31)), ic(31), i)
    d = builder.add(_lookup32(builder, dlo, i, permute),
                    builder.zext(builder.fcmp_ordered(">", a, _lookup32(builder, xc, i, permute)), _I32x16))
    f = _lookup32(builder, ften, d, permute)
    dm = builder.select(builder.icmp_signed(">", d, ic(1)), d, ic(1))
    c = builder.bitcast(builder.shl(builder.add(dm, builder.add(_splat(builder, e), ic(126))), ic(23)), _F32x16)
    u = builder.fmul(builder.fsub(builder.fmul(a, f), fc(np.float32(0.1))), builder.fmul(c, fc(np.float32(1 / 0.9))))
    w = _vcall(builder, "llvm.floor.v16f32", u)
    r = builder.fsub(u, w)
    pos_d = builder.icmp_signed(">", d, ic(0))
    inner = builder.and_(pos_d, builder.and_(builder.fcmp_ordered(">", u, fc(0.5)),
                                             builder.fcmp_ordered("<", u, builder.fsub(c, fc(0.5)))))
    unsure = builder.and_(inner, builder.or_(builder.fcmp_ordered("<", r, fc(_BAND)),
                                             builder.fcmp_ordered(">", r, fc(np.float32(1.0) - _BAND))))
    wc = builder.select(builder.fcmp_ordered(">", w, fc(0.0)), w, fc(0.0))
    cm1 = builder.fsub(c, fc(1.0))
    wc = builder.select(builder.fcmp_ordered("<", wc, cm1), wc, cm1)
    ef = builder.sitofp(_splat(builder, e), _F32x16)
    pos = builder.select(pos_d, builder.fadd(builder.fsub(c, ef), wc), fc(0.0))
    pos = builder.fadd(pos, builder.select(builder.fcmp_ordered(">", a, _splat(builder, top)), fc(1.0), fc(0.0)))
    zv = _splat(builder, z)
    low = builder.fsub(zv, builder.select(builder.fcmp_ordered("<", pos, zv), pos, zv))
    code = builder.fptosi(builder.select(neg, low, builder.fadd(zv, pos)), _I32x16)
    return code, unsure


@intrinsic
def _encode16(typingctx, vals, k, scale, codes, off, xc, dlo, ften, top, z, e, ebase):  # pragma: no cover
    """The codes of ``float32(vals[k:k + 16] / scale)`` into ``codes[off:off + 16]`` (:func:`_encode`'s arithmetic,
    16 lanes, table lookups by AVX-512 permutes); returns the lanes' "unsure" bits (bit ``i``: lane ``i``)."""
    arrays = (vals, codes, xc, dlo, ften)
    if not all(isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" for t in arrays):
        return None
    if vals.dtype not in (types.float32, types.float64) or scale != vals.dtype or codes.dtype != types.uint8:
        return None
    if (xc.dtype, dlo.dtype, ften.dtype, top, z) != (types.float32, types.int32, types.float32, types.float32,
                                                     types.float32):
        return None
    if not (isinstance(e, types.Integer) and isinstance(ebase, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = [context.make_array(t)(context, builder, v).data if isinstance(t, types.Array) else v
                for t, v in zip(signature.args, args)]
        vp, kk, sc, cp, oo, xcp, dlp, ftp, top_, z_, e_, eb = data
        e_, eb = (context.cast(builder, v, t, types.int32) for v, t in ((e_, e), (eb, ebase)))
        vty = ir.VectorType(vp.type.pointee, 16)
        v = builder.load(builder.bitcast(builder.gep(vp, [kk]), vty.as_pointer()), align=vals.dtype.bitwidth // 8)
        x = builder.fdiv(v, _splat(builder, sc))
        x = builder.fptrunc(x, _F32x16) if vals.dtype == types.float64 else x
        permute = _target_has(context, "+avx512f") and not FORCE_SCALAR16[0]
        code, unsure = _encode16_ir(builder, x, xcp, dlp, ftp, top_, z_, e_, eb, permute)
        i8x16 = ir.VectorType(ir.IntType(8), 16)
        builder.store(builder.trunc(code, i8x16), builder.bitcast(builder.gep(cp, [oo]), i8x16.as_pointer()), align=1)
        return builder.zext(builder.bitcast(unsure, ir.IntType(16)), ir.IntType(32))

    return types.uint32(vals, types.intp, scale, codes, types.intp, xc, dlo, ften, top, z, e, ebase), codegen


@njit(inline="always", **_OPTS)
def _encode_fast(vals, n, scale, codes, off, cross, ten, zero, e, vec):  # pragma: no cover - compiled
    """:func:`_encode` with its full 16-value groups by :func:`_encode16` (``vec`` = :func:`_vector`'s tables)."""
    xc, dlo, ften, ebase, ok = vec
    if not ok:
        return _encode(vals, n, scale, codes, off, cross, ten, zero, e)
    full = n - n % 16
    bad = np.uint32(0)
    top, z = cross[7], np.float32(zero)
    for k in range(0, full, 16):
        bad |= _encode16(vals, k, scale, codes, off + k, xc, dlo, ften, top, z, e, ebase)
    tail = _encode(vals[full:], n - full, scale, codes, off + full, cross, ten, zero, e) if full < n else False
    return bad != 0 or tail


@njit(**_OPTS)
def _encode16_agrees(xs, want, edge, cross, zero, e, xc, dlo, ften, ebase):  # pragma: no cover - compiled
    """:func:`_encode16` on ``xs`` (a multiple of 16): the table's code ``want`` or unsure (never where ``edge``)."""
    out = np.empty(xs.size, np.uint8)
    for k in range(0, xs.size, 16):
        bits = _encode16(xs, k, np.float32(1.0), out, k, xc, dlo, ften, cross[7], np.float32(zero), e,
                         ebase)
        for i in range(16):
            unsure = (bits >> np.uint32(i)) & np.uint32(1)
            if (unsure and edge[k + i]) or (not unsure and out[k + i] != want[k + i]):
                return False
    return True


#: Biased float32 exponent of octave-table entry 0 (all below 2**(_EBASE - 126) share it; entry 31: 0.5 and up).
_EBASE = 96


@lru_cache(maxsize=16)
def _vector(values: tuple[float, ...]) -> tuple:
    """``(xc, dlo, ften, ebase, usable)`` for :func:`_encode16`: per binary octave ``i`` (exponent ``_EBASE + i``,
    clamped to 0..31) the decade count below it and the decade boundary inside it (``+inf``: none); ``ften[d]`` =
    ``10**(7 - d)`` (:func:`_encode`'s factor). Usable when the map takes the arithmetic path, no octave holds two
    boundaries, and :func:`_encode16` agrees with the table on the same values as :func:`_arithmetic`'s check."""
    cross, ten, zero, e, usable = _arithmetic(values)
    xc, dlo, ften = np.full(32, np.inf, np.float32), np.zeros(32, np.int32), np.full(32, ten[0], np.float32)
    ften[1:8] = ten
    bounds = cross[:7].astype(np.float64)
    for i in range(32):
        lo = 0.0 if i == 0 else 2.0 ** (_EBASE + i - 127)
        hi = np.inf if i == 31 else 2.0 ** (_EBASE + i - 126)
        inside = bounds[(bounds >= lo) & (bounds < hi)]
        if inside.size > 1:
            usable = False
        dlo[i] = int((bounds < lo).sum())
        xc[i] = inside[0] if inside.size else np.inf
    tabs = (xc, dlo, ften, np.int32(_EBASE))
    if usable:
        xs, want, edge = _band_values(np.asarray(values, dtype=np.float32))
        pad = (-xs.size) % 16  # zeros: code ``zero``
        xs, want = np.append(xs, np.zeros(pad, np.float32)), np.append(want, np.full(pad, zero, np.uint8))
        usable = bool(_encode16_agrees(xs, want, np.append(edge, np.zeros(pad, bool)), cross, zero, e, *tabs))
    return (*tabs, bool(usable))


@intrinsic
def _magnitude(typingctx, x):  # pragma: no cover - compile-time
    """The bit pattern of ``|x|`` as an int32 (float32 ``x``) or int64 (float64): ordered as the magnitudes,
    a NaN above every number (an integer max over these is ``amax``, NaN propagating)."""
    if x not in (types.float32, types.float64):
        return None
    out = types.int32 if x == types.float32 else types.int64

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(out)
        return builder.and_(builder.bitcast(args[0], ty), ir.Constant(ty, (1 << (ty.width - 1)) - 1))

    return out(x), codegen


# ------------------------------------------------------------------ 4-bit codes, by compares
@njit(inline="always", **_OPTS)
def _mix32(h):  # pragma: no cover - compiled
    """:func:`descent.lowbit.quant._mix` on a uint32 (products wrap modulo 2**32, which vectorizes)."""
    k, s = np.uint32(0x45D9F3B), np.uint32(16)
    h = np.uint32(((h >> s) ^ h) * k)
    h = np.uint32(((h >> s) ^ h) * k)
    return np.uint32((h >> s) ^ h)


@njit(**_OPTS)  # a call per block: inlined (Numba IR), the loops vectorize worse (4.5x slower measured)
def _encode4(xs, n, qmap, mids, stored, salt, ci):  # pragma: no cover - compiled
    """``ci[:n]`` = the codes of normalized ``xs`` for a 16-entry map, in loops that vectorize (compares
    against the map's 15 entries or thresholds, no table loads): the nearest entry (the number of
    thresholds below; :func:`descent.lowbit.maps.midpoints`) or, for a signed map, the entry below or
    above against the hashed threshold of :func:`descent.lowbit.quant.encode` (same float32 arithmetic,
    ``salt`` = :func:`descent.lowbit.quant.salt` of the step). A NaN gets the lookup table's code
    (15, or 0 with the sign bit; rounded: 14 or 0)."""
    if qmap[0] < 0:
        key = np.uint32((np.uint64(_as_bits(stored)) >> np.uint64(12)) ^ salt)
        for k in range(n):
            x = xs[k]
            lo, below, above = np.int32(0), np.float32(qmap[0]), np.float32(qmap[1])
            for j in range(1, 15):  # the largest entry <= x, clamped to [0, 14], and the next one
                le = np.float32(qmap[j]) <= x
                lo += np.int32(le)
                below = np.float32(qmap[j]) if le else below
                above = np.float32(qmap[j + 1]) if le else above
            lo = np.int32(14) if (x != x) & (_as_bits(x) < np.uint32(0x80000000)) else lo
            frac = np.float32(x - below) / np.float32(above - below)
            u = np.float32(_mix32(key ^ _mix32(np.uint32(k))) >> np.uint32(8)) * np.float32(2.0**-24)
            ci[k] = np.uint32(lo + np.int32(frac > u))
        return
    for k in range(n):
        x = xs[k]
        c = np.int32(0)
        for j in range(15):
            c += np.int32(mids[j] < x)
        ci[k] = np.uint32(np.int32(15) if (x != x) & (_as_bits(x) < np.uint32(0x80000000)) else c)
