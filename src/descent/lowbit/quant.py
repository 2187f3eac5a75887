"""Blockwise quantization of a flattened tensor, in torch (the reference every kernel is tested against).

A tensor of ``n`` elements is flattened and cut into blocks of ``block`` elements
(the last may be shorter) counted from element 0 of the *global* tensor. Each block
stores its absmax (float32); each element the code (:mod:`descent.lowbit.maps`) of
``y = float32(x / absmax)`` (``x / 1`` when the absmax is 0): the nearest entry, except for
4-bit signed maps (first moments), whose codes are rounded stochastically with a hashed
threshold (:func:`dither`). 8-bit codes take a byte each; 4-bit codes are packed two to a
byte, the even element in the low nibble.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .maps import midpoints

__all__ = ["BLOCK", "block_size", "quantize", "dequantize", "codes_numel", "unpack", "pack", "salt", "dither", "encode"]

#: Elements per block: 256 for 8-bit states (Dettmers et al.), 128 for 4-bit (Li et al., torchao).
BLOCK = {8: 256, 4: 128}


def block_size(bits: int) -> int:
    """Elements per quantization block for ``bits``-bit codes (8 -> 256, 4 -> 128)."""
    if bits not in BLOCK:
        raise ValueError(f"Invalid state_bits: {bits} (must be 4 or 8)")
    return BLOCK[bits]


def codes_numel(numel: int, bits: int) -> int:
    """Bytes of codes for ``numel`` elements."""
    return numel if bits == 8 else (numel + 1) // 2


def pack(codes: Tensor, bits: int) -> Tensor:
    """Pack int codes (one per element) into uint8: identity for 8 bits, two per byte for 4."""
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack(packed: Tensor, bits: int, numel: int) -> Tensor:
    """The int64 code of each of ``numel`` elements from packed uint8 codes."""
    if bits == 8:
        return packed[:numel].long()
    both = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)
    return both[:numel].long()


def _mix(h: Tensor | int) -> Tensor | int:
    """A 32-bit integer hash of int64 values in ``[0, 2**32)`` (two multiply-xorshift rounds); a tensor
    or a Python int (the same operators)."""
    for _ in range(2):
        h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    return (h >> 16) ^ h


def salt(step: int) -> int:
    """The 32-bit hash of a step number that :func:`dither` mixes in (0 for step 0)."""
    return int(_mix(int(step) & 0xFFFFFFFF))  # Python ints: ~0.3 us, a tensor round ~25 us per call


def dither(absmax: Tensor, position: Tensor, step: int = 0) -> Tensor:
    """The float32 threshold ``u`` in [0, 1) of each element for stochastic rounding.

    ``u = (h >> 8) / 2**24`` with ``h`` a 32-bit hash of the element's position in its block,
    of the step number (the state's ``step`` after incrementing: Lion's and SGD's 4-bit states
    count steps for this; 0 for a state saved before they did) and of the float32 absmax of the block, its bits but the lowest 12
    (``mix((bits >> 12) ^ salt(step) ^ mix(position))``, see :func:`_mix`): deterministic, so
    kernels, resumed runs and shards give the same codes; changing from step to step (without
    a step number, only with the absmax, at a relative change of 2**-11 or more: a block whose
    absmax stays put keeps its thresholds, and a decaying entry can stick as when rounded to
    nearest); and a difference in the last bits of an absmax
    (from the last bit of a square root in an earlier step) changes a block's thresholds only
    about once in 4096 times. The Numba kernels compute the same.

    Example:
        >>> u = dither(torch.full((4,), 0.5), torch.arange(4))
        >>> bool(((u >= 0) & (u < 1)).all()), len(set(u.tolist()))
        (True, 4)
    """
    bits = ((absmax.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF) >> 12) ^ salt(step)
    return (_mix(bits ^ _mix(position.to(torch.int64))) >> 8).to(torch.float32) * 2.0**-24


def encode(normalized: Tensor, qmap: Tensor, bits: int, absmax: Tensor, position: Tensor, step: int = 0) -> Tensor:
    """The int64 code of each float32 ``normalized`` value (``x / absmax``).

    The nearest entry of ``qmap`` (ties to the lower one: ``torch.bucketize`` on the
    midpoints; a positive value never gets a map's 0 entry, :func:`descent.lowbit.maps.midpoints`). For a 4-bit signed map, the code is instead that of the entry below
    (``lo``) or above: above when ``(y - qmap[lo]) / (qmap[lo + 1] - qmap[lo]) > u``, ``u``
    from :func:`dither` of ``absmax`` (each element's block's), ``position`` (in its
    block) and ``step``. That rounds up with probability ``(y - qmap[lo]) / gap``, so a first moment is
    unbiased: rounded to nearest, ``0.9 * m`` (a decaying first moment) rounds back to ``m``
    and sticks (+15 % validation loss against fp32 on digits-cnn,
    ``benchmarks/lowbit_ablation.py``). All float32 arithmetic, as in the kernels.
    """
    q = qmap.to(device=normalized.device, dtype=torch.float32)
    codes = torch.bucketize(normalized, midpoints(q), right=False)
    if bits != 4:
        return codes
    lo = (codes - (q[codes] > normalized).long()).clamp_(0, q.numel() - 2)
    below = q[lo]
    up = (normalized - below) / (q[lo + 1] - below) > dither(absmax, position, step)
    return torch.where(q[0] < 0, lo + up.long(), codes)


def _check_block(block: int) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"Invalid block: {block!r} (must be a positive integer)")
    return block


def _blocks(x: Tensor, block: int) -> tuple[Tensor, int]:
    n = x.numel()
    pad = (-n) % block
    flat = x.reshape(-1)
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block), n


def quantize(x: Tensor, qmap: Tensor, bits: int, block: int | None = None, step: int = 0) -> tuple[Tensor, Tensor]:
    """Quantize ``x`` blockwise with the sorted code map ``qmap``.

    Args:
        x: any real floating tensor (flattened; the math runs in its dtype).
        qmap: the sorted float32 code map (``2**bits`` entries).
        bits: 8 or 4.
        block: elements per block (default :func:`block_size` of ``bits``, what the states use;
            another size is for experiments such as ``benchmarks/lowbit_ablation.py``).
        step: the optimizer's step number, mixed into a 4-bit first moment's rounding thresholds
            (:func:`dither`).

    Returns:
        ``(codes, absmax)``: packed uint8 codes and float32 per-block absmax.

    Example:
        >>> from descent.lowbit.maps import code_map
        >>> q = code_map(True, 8)
        >>> codes, absmax = quantize(torch.tensor([0.5, -1.0, 0.0]), q, 8)
        >>> dequantize(codes, absmax, q, 8, 3)
        tensor([ 0.5008, -0.9930,  0.0000])
    """
    block = block_size(bits) if block is None else _check_block(block)
    if qmap.numel() != 1 << bits:  # codes past a 16-entry map, or 4-bit codes read as 8-bit ones
        raise ValueError(f"Invalid qmap: {qmap.numel()} entries for {bits}-bit codes (must be {1 << bits})")
    blocks, n = _blocks(x, block)
    absmax = blocks.abs().amax(dim=1).to(torch.float32)
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax).to(x.dtype)
    normalized = (blocks / scale[:, None]).to(torch.float32).reshape(-1)[:n]
    size = blocks.shape[1]
    position = torch.arange(size, device=x.device).repeat(blocks.shape[0])[:n]
    codes = encode(normalized, qmap, bits, absmax.repeat_interleave(size)[:n], position, step)
    return pack(codes, bits), absmax


def dequantize(codes: Tensor, absmax: Tensor, qmap: Tensor, bits: int, numel: int,
               dtype: torch.dtype = torch.float32, block: int | None = None) -> Tensor:
    """The flat ``numel``-element tensor of ``dtype`` that ``(codes, absmax)`` stand for.

    Each element is ``qmap[code] * absmax[block]``, multiplied in ``dtype``; ``block`` as
    given to :func:`quantize`.
    """
    block = block_size(bits) if block is None else _check_block(block)
    values = qmap.to(device=codes.device, dtype=dtype)[unpack(codes, bits, numel)]
    scale = absmax.to(dtype).repeat_interleave(block)[:numel]
    return values * scale
