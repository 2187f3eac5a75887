"""Blockwise quantization of a flattened tensor, in torch (the reference every kernel is tested against).

A tensor of ``n`` elements is flattened and cut into blocks of ``block`` elements
(the last may be shorter) counted from element 0 of the *global* tensor. Each block
stores its absmax (float32); each element the code (:mod:`descent.lowbit.maps`) of
``float32(x / absmax)`` (``x / 1`` when the absmax is 0). 8-bit codes take a byte
each; 4-bit codes are packed two to a byte, the even element in the low nibble.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK", "block_size", "quantize", "dequantize", "codes_numel", "unpack", "pack"]

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


def _blocks(x: Tensor, block: int) -> tuple[Tensor, int]:
    n = x.numel()
    pad = (-n) % block
    flat = x.reshape(-1)
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block), n


def quantize(x: Tensor, qmap: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Quantize ``x`` blockwise with the sorted code map ``qmap``.

    Args:
        x: any real floating tensor (flattened; the math runs in its dtype).
        qmap: the sorted float32 code map (``2**bits`` entries).
        bits: 8 or 4.

    Returns:
        ``(codes, absmax)``: packed uint8 codes and float32 per-block absmax.

    Example:
        >>> from descent.lowbit.maps import code_map
        >>> q = code_map(True, 8)
        >>> codes, absmax = quantize(torch.tensor([0.5, -1.0, 0.0]), q, 8)
        >>> dequantize(codes, absmax, q, 8, 3)
        tensor([ 0.5000, -0.9930,  0.0000])
    """
    blocks, n = _blocks(x, block_size(bits))
    absmax = blocks.abs().amax(dim=1).to(torch.float32)
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax).to(x.dtype)
    normalized = (blocks / scale[:, None]).to(torch.float32).reshape(-1)[:n]
    mids = ((qmap[:-1] + qmap[1:]) / 2).to(device=x.device, dtype=torch.float32)
    codes = torch.bucketize(normalized, mids, right=False)
    return pack(codes, bits), absmax


def dequantize(codes: Tensor, absmax: Tensor, qmap: Tensor, bits: int, numel: int,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The flat ``numel``-element tensor of ``dtype`` that ``(codes, absmax)`` stand for.

    Each element is ``qmap[code] * absmax[block]``, multiplied in ``dtype``.
    """
    block = block_size(bits)
    values = qmap.to(device=codes.device, dtype=dtype)[unpack(codes, bits, numel)]
    scale = absmax.to(dtype).repeat_interleave(block)[:numel]
    return values * scale
