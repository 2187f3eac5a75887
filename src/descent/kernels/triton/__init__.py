"""descent's GPU kernels: multi-tensor Triton kernels for optimizers torch has no fused kernel for.

One launch steps every tensor of a device/dtype bucket: the launcher builds (once per
set of tensors, then cached on the device) a table of the tensors' addresses and sizes
and a list of blocks ``(tensor, start)``; each Triton program turns an address back into
a typed pointer (``tl.pointer_type``) and updates one block. This is the same plan as
the CPU kernels (:mod:`descent.kernels.multi`), and it works unchanged under Triton's
interpreter (``TRITON_INTERPRET=1``), where the addresses are those of CPU tensors: that
is how the test suite runs every kernel without a GPU.

Launchers follow the kernel convention of :mod:`descent.kernels`:
``launch(params, grads, <state lists named by state key>, steps=..., **hp)`` where ``hp``
are exactly the keyword arguments of the matching :mod:`descent.functional` function:

* ``lion(params, grads, exp_avg, *, lr, beta1, beta2, weight_decay, maximize)``
* ``sophia(params, grads, exp_avg, hessian, *, lr, beta1, rho, bs, weight_decay, eps, maximize)``
* ``rmsprop(params, grads, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps, weight_decay,
  momentum, centered, maximize)``
* ``lamb(params, grads, exp_avg, exp_avg_sq, *, steps, lr, beta1, beta2, eps, weight_decay,
  clamp_value, bias_correction, maximize)``
* ``adafactor(params, grads, row_var, col_var, variance, exp_avg, *, steps, lr, relative_step,
  warmup_init, decay_rate, eps1, eps2, clip_threshold, beta1, weight_decay, scale_parameter, maximize)``
* ``adam_lowbit``, ``lion_lowbit``, ``sgd_lowbit``: 8- and 4-bit states (codes, absmax and map per
  state key), the arguments of :mod:`descent.kernels.lowbit`'s Numba launchers

Parameters may be float32, bfloat16 or float16 (state in the parameter's dtype); the math
is float32 and each stored value is rounded once, to nearest even. Every tensor must be
contiguous, on one device, of one dtype; zero-size tensors are skipped. ``triton`` is
imported only when a launcher is first used, so descent works without it.

Example:
    >>> import torch
    >>> from descent.kernels import triton as KT
    >>> KT.supports(torch.device("cpu"), torch.float32)  # only under TRITON_INTERPRET=1
    False
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import torch

__all__ = ["AVAILABLE", "DTYPES", "LAUNCHERS", "interpreting", "supports", "lion", "sophia", "rmsprop", "lamb",
           "adafactor", "adam_lowbit", "lion_lowbit", "sgd_lowbit"]

#: True when the ``triton`` package is importable (it is not imported here).
AVAILABLE = importlib.util.find_spec("triton") is not None

#: Parameter dtypes the kernels take.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: launcher name -> module that defines it.
LAUNCHERS = {"lion": "_elementwise", "sophia": "_elementwise", "rmsprop": "_elementwise", "lamb": "_lamb",
             "adafactor": "_adafactor", "adam_lowbit": "_lowbit", "lion_lowbit": "_lowbit", "sgd_lowbit": "_lowbit"}


def interpreting() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``), on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    """Support predicate of the ``"triton"`` backend: CUDA (or CPU under the interpreter), fp32/bf16/fp16.

    Example:
        >>> supports(torch.device("cpu"), torch.float64)
        False
    """
    if not AVAILABLE or dtype not in DTYPES:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def __getattr__(name: str) -> Any:
    if name in LAUNCHERS:
        module = importlib.import_module(f"{__name__}.{LAUNCHERS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
