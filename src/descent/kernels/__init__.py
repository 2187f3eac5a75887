"""descent's CPU kernels: single-pass Numba loops for optimizers torch has no fused kernel for.

Each kernel runs over the flat, zero-copy NumPy view of contiguous float32/float64 CPU
tensors and is tested against the pure function in :mod:`descent.functional` that it
implements. Numba is optional: without it :func:`numba_cpu` is False and
:func:`descent.optim._backend.select_backend` picks the ``"loop"`` backend instead.
Compiled code is cached on disk (``cache=True``), so only the first run compiles.
"""

from __future__ import annotations

import torch

try:  # pragma: no cover - depends on the environment
    import numba  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

__all__ = ["AVAILABLE", "PARALLEL_MIN", "numba_cpu", "flat", "kernel_ok", "threads_for"]

#: Tensors smaller than this run on one thread: waking the thread pool costs more than
#: the work, and on a busy machine (torch's own OpenMP pool spinning) far more.
PARALLEL_MIN = 1 << 16

_DTYPES = (torch.float32, torch.float64)


def numba_cpu(device: torch.device, dtype: torch.dtype) -> bool:
    """Support predicate of the ``"fused"`` (Numba) backend: float32/float64 on CPU."""
    return AVAILABLE and device.type == "cpu" and dtype in _DTYPES


def kernel_ok(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor can be handed to a kernel as a zero-copy view (contiguous, non-empty).

    It also sets the Numba thread count for the tensor (:func:`threads_for`).
    """
    if tensors[0] is None or tensors[0].numel() == 0:
        return False
    if not all(t is None or t.is_contiguous() for t in tensors):
        return False
    threads_for(tensors[0].numel())
    return True


def threads_for(numel: int) -> None:
    """Use one Numba thread for a small tensor, all of them for a large one."""
    numba.set_num_threads(1 if numel < PARALLEL_MIN else numba.config.NUMBA_NUM_THREADS)


def flat(t: torch.Tensor):  # -> numpy.ndarray
    """The zero-copy 1-D NumPy view of a contiguous CPU tensor."""
    return t.detach().view(-1).numpy()
