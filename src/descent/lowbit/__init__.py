"""Low-bit optimizer states: blockwise dynamic quantization with blocks on the global tensor.

* :mod:`~descent.lowbit.maps`: the code maps (dynamic signed/unsigned, 4-bit square) and
  the O(1) lookup tables the kernels quantize with;
* :mod:`~descent.lowbit.quant`: quantize/dequantize in torch (the reference);
* :mod:`~descent.lowbit.state`: :class:`QuantState`, plain tensors that slice and join on
  block boundaries, so a state does not depend on how its parameter is sharded.

Example:
    >>> import torch
    >>> from descent.lowbit import QuantState
    >>> s = QuantState.quantize(torch.randn(4096), signed=True, bits=8)
    >>> s.codes.dtype, s.absmax.shape
    (torch.uint8, torch.Size([16]))
"""

from .maps import code_map, dynamic_map, linear_map, square_map
from .quant import BLOCK, block_size, dequantize, quantize
from .state import QuantState, aligned_ranges

__all__ = ["BLOCK", "MIN_NUMEL", "QuantState", "aligned_ranges", "block_size", "code_map", "dequantize",
           "dynamic_map", "linear_map", "quantize", "square_map"]

#: Parameters with fewer elements keep full-precision state (as bitsandbytes' ``min_8bit_size``).
MIN_NUMEL = 4096
