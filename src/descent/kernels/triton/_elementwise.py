"""Triton multi-tensor kernels for the elementwise optimizers: Lion, Sophia-G, RMSprop.

One launch per bucket; program ``k`` updates block ``k`` of the bucket's block table
(:func:`descent.kernels.triton._common.block_table`). The float32 arithmetic follows the
functional's operation order (with ``tl.fma`` exactly where torch's CPU kernels fuse,
as in RMSprop), divisions and square roots are correctly rounded (``div_rn``,
``sqrt_rn``) and nothing else is contracted, so for float32 the result equals
:mod:`descent.functional` bit for bit; bfloat16/float16 tensors are loaded to float32,
updated in float32 and rounded once on store.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (LAUNCH, TL, address_rows, block_table, cached_ints, pointers_key, positions, scalars, sign_of,
                      store, wide)

__all__ = ["BLOCK", "lion", "sophia", "rmsprop"]

#: Elements per program.
BLOCK = 2048


@triton.jit
def _ptr(addr, role, t, T, DT: tl.constexpr):
    """The typed pointer of tensor ``t`` in role ``role`` of a role-major address table."""
    return tl.load(addr + role * T + t).to(tl.pointer_type(DT))


@triton.jit
def _block(addr, sizes, blocks, BLOCK: tl.constexpr):
    """(tensor index, element offsets, mask) of this program's block."""
    k = tl.program_id(0)
    t = tl.load(blocks + 2 * k)
    start = tl.load(blocks + 2 * k + 1)
    offs = start + tl.arange(0, BLOCK)
    return t, offs, offs < tl.load(sizes + t)


@triton.jit
def _lion_kernel(addr, sizes, blocks, T, hp, DT: tl.constexpr, BLOCK: tl.constexpr):
    t, offs, mask = _block(addr, sizes, blocks, BLOCK)
    decay, lr, b1, c1 = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3)
    b2, c2, sign = tl.load(hp + 4), tl.load(hp + 5), tl.load(hp + 6)
    pp, gp, mp = _ptr(addr, 0, t, T, DT) + offs, _ptr(addr, 1, t, T, DT) + offs, _ptr(addr, 2, t, T, DT) + offs
    p = tl.load(pp, mask=mask).to(tl.float32)
    g = tl.load(gp, mask=mask).to(tl.float32) * sign
    m = tl.load(mp, mask=mask).to(tl.float32)
    c = m * b1 + g * c1
    s = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, c))
    store(pp, p * decay - s * lr, mask, DT)
    store(mp, m * b2 + g * c2, mask, DT)


@triton.jit
def _sophia_kernel(addr, sizes, blocks, T, hp, DT: tl.constexpr, BLOCK: tl.constexpr):
    t, offs, mask = _block(addr, sizes, blocks, BLOCK)
    decay, lr, b1, c1 = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3)
    rho_bs, eps, sign = tl.load(hp + 4), tl.load(hp + 5), tl.load(hp + 6)
    pp, gp, mp = _ptr(addr, 0, t, T, DT) + offs, _ptr(addr, 1, t, T, DT) + offs, _ptr(addr, 2, t, T, DT) + offs
    p = tl.load(pp, mask=mask).to(tl.float32)
    g = tl.load(gp, mask=mask).to(tl.float32) * sign
    h = tl.load(_ptr(addr, 3, t, T, DT) + offs, mask=mask).to(tl.float32)
    m = tl.load(mp, mask=mask).to(tl.float32) * b1 + g * c1
    r = tl.minimum(tl.div_rn(tl.abs(m), tl.maximum(h, 0.0) * rho_bs + eps), 1.0)
    s = tl.where(m > 0, 1.0, tl.where(m < 0, -1.0, m))
    store(mp, m, mask, DT)
    store(pp, p * decay - s * r * lr, mask, DT)


@triton.jit
def _rmsprop_kernel(addr, sizes, blocks, T, hp, DT: tl.constexpr, BLOCK: tl.constexpr, DECAY: tl.constexpr,
                    CENTERED: tl.constexpr, MOMENTUM: tl.constexpr):
    t, offs, mask = _block(addr, sizes, blocks, BLOCK)
    lr, alpha, c, eps = tl.load(hp), tl.load(hp + 1), tl.load(hp + 2), tl.load(hp + 3)
    wd, mom, sign = tl.load(hp + 4), tl.load(hp + 5), tl.load(hp + 6)
    pp, vp = _ptr(addr, 0, t, T, DT) + offs, _ptr(addr, 2, t, T, DT) + offs
    p = tl.load(pp, mask=mask).to(tl.float32)
    g = tl.load(_ptr(addr, 1, t, T, DT) + offs, mask=mask).to(tl.float32) * sign
    if DECAY:
        g = tl.fma(p, wd, g)  # grad.add(param, alpha=wd)
    v = tl.fma(c * g, g, tl.load(vp, mask=mask).to(tl.float32) * alpha)  # mul_(alpha).addcmul_(g, g, value=c)
    store(vp, v, mask, DT)
    if CENTERED:
        ap = _ptr(addr, 3, t, T, DT) + offs
        a = tl.load(ap, mask=mask).to(tl.float32)
        a = tl.where(c < 0.5, tl.fma(c, g - a, a), tl.fma(c - 1.0, g - a, g))  # grad_avg.lerp_(g, c)
        store(ap, a, mask, DT)
        avg = tl.sqrt_rn(tl.fma(-a, a, v)) + eps
    else:
        avg = tl.sqrt_rn(v) + eps
    if MOMENTUM:
        bp = _ptr(addr, 4, t, T, DT) + offs
        b = tl.load(bp, mask=mask).to(tl.float32) * mom + tl.div_rn(g, avg)  # mul_(mom).addcdiv_(g, avg)
        store(bp, b, mask, DT)
        store(pp, tl.fma(-lr, b, p), mask, DT)  # add_(buf, alpha=-lr)
    else:
        store(pp, p + tl.div_rn(-lr * g, avg), mask, DT)  # addcdiv_(g, avg, value=-lr)


def _launch(kernel, params: Sequence[Tensor], named: dict[str, Sequence[Tensor | None] | None],
            values: tuple[float | torch.Tensor, ...], capturable: bool, **flags: bool) -> None:
    """One launch of an elementwise kernel over the non-empty tensors; ``named`` are the other
    roles (grads, states) in the kernel's address-table order, ``values`` its scalars
    (:func:`descent.kernels.triton._common.scalars`)."""
    keep = positions(params, named, same_shape=tuple(named))
    if not keep:
        return
    cols = [None if c is None else [c[i] for i in keep] for c in (params, *named.values())]
    sizes = [params[i].numel() for i in keep]
    addr, size_t, blocks = cached_ints(("elementwise", BLOCK, pointers_key(*cols)), params[0].device,
                                       lambda: [address_rows(cols, len(keep)), sizes, block_table(sizes, BLOCK)])
    hp = scalars(values, params[0].device, capturable)
    kernel[(blocks.numel() // 2,)](addr, size_t, blocks, len(keep), hp, DT=TL[params[0].dtype], BLOCK=BLOCK, **flags,
                                   **LAUNCH)


def _wide(params: Sequence[Tensor], *values: float | Tensor) -> tuple[float | Tensor, ...]:
    """``values`` with tensors made float64 scalars on the bucket's device (:func:`_common.wide`)."""
    return tuple(wide(v, params[0].device) for v in values) if params else values


def _decay(lr: float | Tensor, weight_decay: float | Tensor) -> float | Tensor:
    """``1 - lr * weight_decay`` (1.0 for a zero number)."""
    return 1 - lr * weight_decay if isinstance(weight_decay, Tensor) or weight_decay != 0 else 1.0


def lion(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avg: Sequence[Tensor], *, lr: float | Tensor,
         beta1: float | Tensor, beta2: float | Tensor, weight_decay: float | Tensor = 0.0, maximize: bool = False,
         capturable: bool = False) -> None:
    """Lion (:func:`descent.functional.lion`) on every tensor of a bucket, one launch.

    With ``capturable`` the scalars are made on the device (the hyperparameters may be 0-d
    device tensors): no host sync, so the launch can be captured in a CUDA graph.

    Example:
        >>> import torch  # doctest: +SKIP
        >>> p = [torch.ones(3, device="cuda")]
        >>> lion(p, [torch.ones(3, device="cuda")], [torch.zeros(3, device="cuda")], lr=0.1, beta1=0.9, beta2=0.99)
    """
    lr, beta1, beta2, weight_decay = _wide(params, lr, beta1, beta2, weight_decay)
    _launch(_lion_kernel, params, {"grads": grads, "exp_avg": exp_avg},
            (_decay(lr, weight_decay), lr, beta1, 1 - beta1, beta2, 1 - beta2, sign_of(maximize)), capturable)


def sophia(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avg: Sequence[Tensor], hessian: Sequence[Tensor],
           *, lr: float | Tensor, beta1: float | Tensor, rho: float | Tensor, bs: float | Tensor,
           weight_decay: float | Tensor = 0.0, eps: float | Tensor = 1e-15, maximize: bool = False,
           capturable: bool = False) -> None:
    """Sophia-G (:func:`descent.functional.sophia`) on every tensor of a bucket, one launch
    (``capturable``: see :func:`lion`).

    Example:
        >>> import torch  # doctest: +SKIP
        >>> z = lambda: [torch.zeros(3, device="cuda")]
        >>> sophia(z(), z(), z(), z(), lr=0.1, beta1=0.9, rho=0.04, bs=480)
    """
    lr, beta1, rho, bs, weight_decay, eps = _wide(params, lr, beta1, rho, bs, weight_decay, eps)
    _launch(_sophia_kernel, params, {"grads": grads, "exp_avg": exp_avg, "hessian": hessian},
            (_decay(lr, weight_decay), lr, beta1, 1 - beta1, rho * bs, eps, sign_of(maximize)), capturable)


def rmsprop(params: Sequence[Tensor], grads: Sequence[Tensor], square_avg: Sequence[Tensor],
            grad_avg: Sequence[Tensor | None] | None, momentum_buffer: Sequence[Tensor | None] | None, *,
            lr: float | Tensor, alpha: float | Tensor = 0.99, eps: float | Tensor = 1e-8,
            weight_decay: float | Tensor = 0.0, momentum: float = 0.0, centered: bool = False, maximize: bool = False,
            capturable: bool = False) -> None:
    """RMSprop (:func:`descent.functional.rmsprop`) on every tensor of a bucket, one launch.

    ``grad_avg`` is needed when ``centered``, ``momentum_buffer`` when ``momentum > 0``
    (either may be ``None`` otherwise; ``momentum`` is a number: it decides the state).
    ``capturable``: see :func:`lion`.

    Example:
        >>> import torch  # doctest: +SKIP
        >>> z = lambda: [torch.zeros(3, device="cuda")]
        >>> rmsprop(z(), z(), z(), None, None, lr=0.01)
    """
    for name, col, needed in (("grad_avg", grad_avg, centered), ("momentum_buffer", momentum_buffer, momentum > 0)):
        if needed and (col is None or any(t is None for t in col)):
            raise ValueError(f"Invalid {name}: None (needed with centered={centered}, momentum={momentum})")
    lr, alpha, eps, weight_decay = _wide(params, lr, alpha, eps, weight_decay)
    decay = isinstance(weight_decay, Tensor) or weight_decay != 0
    _launch(_rmsprop_kernel, params, {"grads": grads, "square_avg": square_avg,
                                      "grad_avg": grad_avg if centered else None,
                                      "momentum_buffer": momentum_buffer if momentum > 0 else None},
            (lr, alpha, 1 - alpha, eps, weight_decay, momentum, sign_of(maximize)), capturable,
            DECAY=decay, CENTERED=centered, MOMENTUM=momentum > 0)
