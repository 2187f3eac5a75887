"""The one place that decides how an optimizer step runs.

Backends, by name:

* ``"loop"``: descent's pure per-tensor function from :mod:`descent.functional`,
  one tensor at a time. Always available; the reference for every other path.
* ``"foreach"``: multi-tensor (``torch._foreach_*``) kernels over a whole
  device/dtype bucket.
* ``"fused"``: a single-pass kernel per bucket: torch's fused kernels where torch
  has one (SGD, Adam, AdamW, Adagrad), descent's Numba kernels on CPU for the
  algorithms torch has none for.

Rule (as torch's ``_default_to_fused_or_foreach``): an explicit request wins and
fails loudly when it cannot be honoured; otherwise the fastest correct path for the
device is taken from :data:`PREFERENCE`. Whatever the backend, a kernel is handed only the
plain, dense, contiguous tensors of a bucket (:func:`descent.kernels.kernel_ok`); the rest
run the functional. That matters for torch's own kernels too: torch 2.13's
``SGD(fused=True)`` on a strided view moves the wrong elements (20 steps of lr 1e-3 on
``(w.mv(x) + b).pow(2).sum()`` with ``w = randn(10, 5, 2)[..., 0]`` end at 68.6 against the
loop's 15.5, momentum 0); torch never picks fused by default, descent does, so descent checks. Measured on the 2-core CPU machine
(``benchmarks/step_speed.py``), foreach is slower than the plain loop for many
tensors, so the CPU order is fused > loop > foreach.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["BACKENDS", "PREFERENCE", "resolve_request", "select_backend"]

BACKENDS = ("loop", "foreach", "fused")

#: Order of preference when nothing was asked for, per device type.
PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("fused", "loop", "foreach"),
    "cuda": ("fused", "foreach", "loop"),
}
_DEFAULT_PREFERENCE = ("foreach", "loop")

#: A predicate saying whether a backend can run a bucket of this device and dtype.
Support = Callable[[torch.device, torch.dtype], bool]


def resolve_request(backend: str | None, foreach: bool | None, fused: bool | None) -> str | None:
    """Turn torch-style ``foreach``/``fused`` flags and descent's ``backend`` into one request.

    Returns the explicitly requested backend name, or ``None`` for "choose for me".
    ``foreach=False`` alone only rules foreach out, which the default already does on CPU.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (must be one of {', '.join(BACKENDS)} or None)")
    if foreach and fused:
        raise ValueError("Invalid foreach=True with fused=True: choose one of the two")
    requested = backend
    for flag, name in ((fused, "fused"), (foreach, "foreach")):
        if flag:
            if requested is not None and requested != name:
                raise ValueError(f"Invalid backend: {backend!r} conflicts with {name}=True")
            requested = name
    return requested


def select_backend(
    requested: str | None,
    supported: Mapping[str, Support],
    device: torch.device,
    dtype: torch.dtype,
    *,
    owner: str = "optimizer",
    excluded: tuple[str, ...] = (),
) -> str:
    """Choose the backend for one device/dtype bucket.

    Args:
        requested: an explicit backend name, or ``None``.
        supported: backend name -> predicate over (device, dtype) for this algorithm.
        device, dtype: the bucket's.
        owner: the optimizer's name, for error messages.
        excluded: backends ruled out by the caller (e.g. ``("foreach",)`` for ``foreach=False``).

    Raises:
        RuntimeError: when an explicitly requested backend cannot run this bucket.
    """
    if requested is not None:
        check = supported.get(requested)
        if check is None:
            raise ValueError(
                f"Invalid backend for {owner}: {requested!r} (available: {', '.join(supported)})"
            )
        if not check(device, dtype):
            raise RuntimeError(
                f"{owner}: backend {requested!r} cannot run parameters of dtype {dtype} on {device}"
            )
        return requested
    for name in PREFERENCE.get(device.type, _DEFAULT_PREFERENCE):
        if name in excluded:
            continue
        check = supported.get(name)
        if check is not None and check(device, dtype):
            return name
    return "loop"


def floating(device: torch.device, dtype: torch.dtype) -> bool:
    """Support predicate: any real floating dtype on any device."""
    return dtype.is_floating_point


def torch_fused(device: torch.device, dtype: torch.dtype) -> bool:
    """Support predicate for torch's fused optimizer kernels (CPU, CUDA, MPS, XPU)."""
    return dtype.is_floating_point and device.type in ("cpu", "cuda", "mps", "xpu")


def torch_fused_sgd(device: torch.device, dtype: torch.dtype) -> bool:
    """torch's fused SGD, except half precision on CPU.

    Measured on torch 2.13 (CPU): ``torch.optim.SGD(fused=True)`` on bfloat16 or
    float16 parameters drifts far from its own for-loop path (max |diff| 0.4-1.4 after
    10 steps of lr 0.05, even with momentum 0), while float32 agrees to 2e-7. descent
    therefore runs half-precision SGD on the loop path there.
    """
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return False
    return torch_fused(device, dtype)
