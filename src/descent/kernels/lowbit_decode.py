"""Dequantization of 8-bit states by in-register byte permutes, for :mod:`descent.kernels.lowbit`.

:func:`_decode64` rebuilds 64 values ``qmap[codes] * absmax`` at once. The map's 256 float32
entries are held as 4 byte planes of 256 bytes (byte ``b`` of every entry, :func:`planes`); with
AVX-512 VBMI each plane is looked up for 64 codes by two ``vpermi2b`` (entries 0-127 and 128-255)
and a blend on the code's top bit, and the 4 planes are interleaved back into floats by byte and
word unpacks (the codes are permuted first so that the unpacks leave the values in order). That is
a table lookup, so it is exact for any map; :func:`decoder` still checks it against the map on all
256 codes when the tables are built. Where the compiling CPU lacks VBMI (Numba compiles for the
host; its cache is keyed by the CPU's features) the same function compiles to 64 scalar table loads.
On this Zen 4 CPU the permutes take ~0.1 ns per value against ~0.3 for scalar loads
(``python benchmarks/lowbit_speed.py --parts``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .lowbit_encode import _F32x16, _OPTS, _target_has

__all__ = ["decoder", "planes"]

#: Set to True to compile :func:`_decode64` as scalar loads even on a VBMI CPU (for tests; read at compile time).
FORCE_SCALAR = [False]

_NEEDS = ("+avx512f", "+avx512bw", "+avx512vbmi")
_I8x64 = ir.VectorType(ir.IntType(8), 64)
_I16x32 = ir.VectorType(ir.IntType(16), 32)


def _vbmi(context) -> bool:  # noqa: ANN001 - a Numba target context
    return not FORCE_SCALAR[0] and _target_has(context, *_NEEDS)


def _mask(values: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), values)


#: Codes reordered so that the byte/word unpacks (which work within 128-bit lanes) give values in order:
#: position ``16 L + 4 q + i`` takes code ``16 q + 4 L + i``.
_ORDER = [16 * q + 4 * lane + i for lane in range(4) for q in range(4) for i in range(4)]
_LO_BW = [16 * lane + j + 64 * s for lane in range(4) for j in range(8) for s in (0, 1)]
_HI_BW = [16 * lane + 8 + j + 64 * s for lane in range(4) for j in range(8) for s in (0, 1)]
_LO_WD = [8 * lane + j + 32 * s for lane in range(4) for j in range(4) for s in (0, 1)]
_HI_WD = [8 * lane + 4 + j + 32 * s for lane in range(4) for j in range(4) for s in (0, 1)]


def _permute_values(builder: ir.IRBuilder, codes: ir.Value, planes: ir.Value) -> list[ir.Value]:
    """The 64 float32 entries of ``codes`` (``<64 x i8>``) as 4 ``<16 x float>``, in order."""
    perm2 = builder.module.declare_intrinsic("llvm.x86.avx512.vpermi2var.qi.512",
                                             fnty=ir.FunctionType(_I8x64, [_I8x64] * 3))
    c = builder.shuffle_vector(codes, codes, _mask(_ORDER))
    high = builder.icmp_signed("<", c, ir.Constant(_I8x64, None))
    vp = builder.bitcast(planes, _I8x64.as_pointer())
    b = []
    for plane in range(4):
        t = [builder.load(builder.gep(vp, [ir.Constant(ir.IntType(64), 4 * plane + k)]), align=1) for k in range(4)]
        b.append(builder.select(high, builder.call(perm2, [t[2], c, t[3]]), builder.call(perm2, [t[0], c, t[1]])))
    w = [builder.bitcast(builder.shuffle_vector(b[i], b[i + 1], _mask(m)), _I16x32)
         for m in (_LO_BW, _HI_BW) for i in (0, 2)]  # bytes 0|1 and 2|3 of values 0-7, then 8-15 of each lane
    return [builder.bitcast(builder.shuffle_vector(w[i], w[i + 1], _mask(m)), _F32x16)
            for i in (0, 2) for m in (_LO_WD, _HI_WD)]


def _scalar_values(builder: ir.IRBuilder, codes: ir.Value, qmap: ir.Value) -> list[ir.Value]:
    """The same by 64 scalar loads from the map (float32 or float64)."""
    out = []
    for q in range(4):
        vec = ir.Constant(ir.VectorType(qmap.type.pointee, 16), None)
        for i in range(16):
            code = builder.zext(builder.extract_element(codes, ir.Constant(ir.IntType(32), 16 * q + i)),
                                ir.IntType(64))
            vec = builder.insert_element(vec, builder.load(builder.gep(qmap, [code])), ir.Constant(ir.IntType(32), i))
        out.append(vec)
    return out


@intrinsic
def _decode64(typingctx, codes, coff, planes, qmap, out, ooff, absmax):  # pragma: no cover - compile-time
    """``out[ooff:ooff + 64] = qmap[codes[coff:coff + 64]] * absmax`` (``out`` float32 or float64, contiguous;
    ``qmap`` float32 or ``out``'s dtype, ``planes`` the uint8 byte planes of its float32 entries, :func:`planes`)."""
    arrays = (codes, planes, qmap, out)
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays):
        return None
    if codes.dtype != types.uint8 or planes.dtype != types.uint8 or qmap.dtype not in (types.float32, out.dtype):
        return None
    if out.dtype not in (types.float32, types.float64) or absmax != out.dtype:
        return None

    def codegen(context, builder, signature, args):
        c_arr, c_off, p_arr, q_arr, o_arr, o_off, scale = args
        data = [context.make_array(t)(context, builder, v).data for t, v in zip(signature.args, args)
                if isinstance(t, types.Array)]
        cp = builder.gep(data[0], [c_off])
        codes64 = builder.load(builder.bitcast(cp, _I8x64.as_pointer()), align=1)
        vals = _permute_values(builder, codes64, data[1]) if _vbmi(context) else _scalar_values(builder, codes64,
                                                                                                   data[2])
        wide = out.dtype == types.float64
        vty = ir.VectorType(ir.DoubleType() if wide else ir.FloatType(), 16)
        splat = builder.insert_element(ir.Constant(vty, None), scale, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, splat, _mask([0] * 16))
        op = builder.gep(data[3], [o_off])
        for q, v in enumerate(vals):
            v = builder.fpext(v, vty) if v.type != vty else v
            dst = builder.bitcast(builder.gep(op, [ir.Constant(ir.IntType(64), 16 * q)]), vty.as_pointer())
            builder.store(builder.fmul(v, splat), dst, align=out.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(codes, types.intp, planes, qmap, out, types.intp, absmax), codegen


@njit(inline="always", **_OPTS)
def _decode(codes, off, n, qmap, planes, absmax, out):  # pragma: no cover - compiled
    """``out[:n] = qmap[codes[off:off + n]] * absmax``: 64 at a time by :func:`_decode64`, the rest by table loads."""
    full = n - n % 64
    for k in range(0, full, 64):
        _decode64(codes, off + k, planes, qmap, out, k, absmax)
    for k in range(full, n):
        out[k] = qmap[codes[off + k]] * absmax


@njit(**_OPTS)
def _decode_all(codes, qmap, planes, out):  # pragma: no cover - compiled
    _decode(codes, 0, codes.size, qmap, planes, out.dtype.type(1.0), out)


def planes(qmap: np.ndarray) -> np.ndarray:
    """The 256 float32 entries of an 8-bit map as 4 byte planes: ``planes[256 b + c]`` = byte ``b`` of entry ``c``."""
    q = np.ascontiguousarray(qmap, dtype=np.float32)
    if q.size != 256:
        raise ValueError(f"Invalid map size: {q.size} (the byte-plane decoder needs 256 entries)")
    return np.ascontiguousarray(q.view(np.uint8).reshape(256, 4).T).reshape(-1)


@lru_cache(maxsize=16)
def decoder(values: tuple[float, ...]) -> tuple[np.ndarray, bool]:
    """``(planes, exact)`` for an 8-bit map: exact when :func:`_decode64` gives every one of the 256
    entries bit for bit, in float32 and float64 (checked here, once per map); otherwise the kernel
    dequantizes by scalar table loads."""
    qmap = np.asarray(values, dtype=np.float32)
    if qmap.size != 256:
        return np.zeros(1024, np.uint8), False
    p = planes(qmap)
    codes = np.concatenate([np.arange(256), np.arange(256)[::-1]]).astype(np.uint8)
    exact = True
    for dt in (np.float32, np.float64):
        got = np.empty(codes.size, dt)
        _decode_all(codes, qmap.astype(dt), p, got)
        exact = exact and np.array_equal(got.view(np.uint8), qmap[codes].astype(dt).view(np.uint8))
    return p, bool(exact)
