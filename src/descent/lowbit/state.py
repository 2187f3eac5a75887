"""A quantized state as plain tensors, and how it is cut into shards and put back together.

Blocks are counted on the global (flattened) tensor, so the codes and absmax of
elements ``[start, stop)`` of a parameter are the same whether the parameter is
stepped whole, as a ZeRO partition or as a shard, as long as ``start`` falls on a
block boundary (a multiple of 256 elements for 8-bit states, 128 for 4-bit). Slicing
and concatenating are then exact: no requantization, so a checkpoint written by 1
process loads into 2 or 4 and back bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .maps import code_map
from .quant import block_size, codes_numel, dequantize, quantize

__all__ = ["QuantState", "aligned_ranges", "codes_shape"]


class QuantState(NamedTuple):
    """One quantized state tensor (e.g. ``exp_avg``) as plain tensors.

    In an optimizer's state it appears as three entries: ``key`` (the uint8 codes),
    ``key + "_absmax"`` (float32, one per block) and ``key + "_qmap"`` (the code map),
    so a state_dict loads with ``torch.load(weights_only=True)``.

    Attributes:
        codes: packed uint8 codes, ``numel`` (8-bit) or ``ceil(numel / 2)`` (4-bit) bytes.
        absmax: float32 absmax of each block.
        qmap: the sorted float32 code map (256 or 16 entries).
        numel: elements the state stands for.

    Example:
        >>> s = QuantState.quantize(torch.linspace(-1, 1, 1000), signed=True, bits=8)
        >>> a, b = s.slice(0, 512), s.slice(512, 1000)
        >>> torch.equal(QuantState.cat([a, b]).codes, s.codes)
        True
    """

    codes: Tensor
    absmax: Tensor
    qmap: Tensor
    numel: int

    @property
    def bits(self) -> int:
        """8 or 4, from the size of the map."""
        return 8 if self.qmap.numel() == 256 else 4

    @classmethod
    def quantize(cls, x: Tensor, signed: bool, bits: int, step: int = 0) -> QuantState:
        """Quantize ``x`` (flattened) with the shared map for ``signed``/``bits`` (``step``: see
        :func:`descent.lowbit.quant.dither`)."""
        qmap = code_map(signed, bits, x.device)
        codes, absmax = quantize(x, qmap, bits, step=step)
        return cls(codes, absmax, qmap, x.numel())

    @classmethod
    def zeros(cls, numel: int, signed: bool, bits: int, device: torch.device | str = "cpu") -> QuantState:
        """The state of ``numel`` zeros (absmax 0)."""
        return cls.quantize(torch.zeros(numel, device=device), signed, bits)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The flat tensor this state stands for."""
        return dequantize(self.codes, self.absmax, self.qmap, self.bits, self.numel, dtype)

    def slice(self, start: int, stop: int) -> QuantState:
        """The state of elements ``[start, stop)``; ``start`` must be on a block boundary."""
        block = block_size(self.bits)
        if not 0 <= start <= stop <= self.numel:
            raise ValueError(f"Invalid range: [{start}, {stop}) of a state of {self.numel} elements")
        if start % block or (stop % block and stop != self.numel):
            raise ValueError(
                f"Invalid range: [{start}, {stop}) is not aligned to the {block}-element blocks of a "
                f"{self.bits}-bit state (boundaries must be multiples of {block}, or the end)"
            )
        per_byte = 1 if self.bits == 8 else 2
        codes = self.codes[start // per_byte: start // per_byte + codes_numel(stop - start, self.bits)]
        absmax = self.absmax[start // block: -(-stop // block)]
        return QuantState(codes, absmax, self.qmap, stop - start)

    @staticmethod
    def cat(parts: Sequence[QuantState]) -> QuantState:
        """Join consecutive slices (every part but the last a whole number of blocks)."""
        if not parts:
            raise ValueError("Invalid parts: nothing to concatenate")
        block = block_size(parts[0].bits)
        for i, p in enumerate(parts):
            if p.bits != parts[0].bits:
                raise ValueError(f"Invalid parts: part {i} is {p.bits}-bit, part 0 {parts[0].bits}-bit")
            if p.qmap is not parts[0].qmap and not torch.equal(p.qmap.to(parts[0].qmap.device), parts[0].qmap):
                raise ValueError(f"Invalid parts: part {i} has another code map than part 0")
            if p.numel % block and i < len(parts) - 1:
                raise ValueError(f"Invalid parts: part {i} has {p.numel} elements, not a multiple of {block}")
        return QuantState(torch.cat([p.codes for p in parts]), torch.cat([p.absmax for p in parts]),
                          parts[0].qmap, sum(p.numel for p in parts))

    def split(self, parts: int) -> list[QuantState]:
        """Cut into ``parts`` consecutive block-aligned slices (see :func:`aligned_ranges`)."""
        return [self.slice(a, b) for a, b in aligned_ranges(self.numel, parts, block_size(self.bits))]

    def entries(self, key: str, shape: Sequence[int] | None = None) -> dict[str, Tensor]:
        """The optimizer-state entries of this state under ``key``, the codes viewed as ``shape``
        if given (:func:`codes_shape` of the parameter's shape, as optimizers store them)."""
        codes = self.codes if shape is None else self.codes.view(tuple(shape))
        return {key: codes, key + "_absmax": self.absmax, key + "_qmap": self.qmap}

    @classmethod
    def from_entries(cls, state: Mapping[str, Any], key: str, numel: int) -> QuantState:
        """Read the state stored under ``key`` by :meth:`entries` (codes of any shape, read flat)."""
        return cls(state[key].reshape(-1), state[key + "_absmax"], state[key + "_qmap"], numel)


def codes_shape(shape: Sequence[int], bits: int) -> tuple[int, ...]:
    """The shape an optimizer stores a parameter's codes in: the parameter's own for 8-bit
    codes; for 4-bit, ``(rows, cols // 2)`` with ``cols`` the elements per dim-0 slice when
    that is even (packed pairs never straddle two rows), else flat.

    A whole tensor and its FSDP2 ``Shard(0)`` shards then have codes of the same global
    shape, cut at the same rows, so ``torch.distributed.checkpoint`` reshards them.

    Example:
        >>> codes_shape((75, 80), 8), codes_shape((75, 80), 4), codes_shape((75, 81), 4)
        ((75, 80), (75, 40), (3038,))
    """
    shape = tuple(int(d) for d in shape)
    numel = math.prod(shape)
    if bits == 8:
        return shape
    cols = numel // shape[0] if shape and shape[0] else 1
    if len(shape) >= 2 and cols % 2 == 0:
        return (shape[0], cols // 2)
    return (codes_numel(numel, bits),)


def aligned_ranges(numel: int, parts: int, block: int) -> list[tuple[int, int]]:
    """``parts`` consecutive element ranges covering ``[0, numel)``, each boundary a multiple of ``block``.

    Whole blocks are dealt out as evenly as possible (earlier ranges get the extra ones).

    Example:
        >>> aligned_ranges(1000, 3, 256)
        [(0, 512), (512, 768), (768, 1000)]
    """
    if parts < 1:
        raise ValueError(f"Invalid parts: {parts} (must be >= 1)")
    blocks = -(-numel // block)
    out, start = [], 0
    for i in range(parts):
        count = blocks // parts + (1 if i < blocks % parts else 0)
        stop = min(numel, start + count * block)
        out.append((start, stop))
        start = stop
    return out
