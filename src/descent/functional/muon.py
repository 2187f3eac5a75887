"""Muon (Jordan et al., 2024): momentum orthogonalized by a Newton–Schulz iteration."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["NS_COEFFICIENTS", "NS_METHODS", "newton_schulz", "gram_newton_schulz", "muon", "muon_batched",
           "muon_lr_scale", "muon_ns_dtype"]

#: Matrices with min(m, n)^2 * max(m, n) at or above this are orthogonalized one at a time:
#: batching pays for many small matrices (16 x 64x64: 1.2 vs 9.8 ms on the 2-core CPU) and
#: stops paying at about 256x1024 (86 vs 85 ms; 16 x 320x1280: batched 8-20 % slower).
BATCH_LIMIT = 2**26

#: Keller Jordan's quintic coefficients (a, b, c), tuned for the slope at zero.
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

#: Ways to evaluate the iteration (see :func:`newton_schulz`).
NS_METHODS = ("standard", "gram", "auto")

#: ``method="auto"`` takes the Gram form when the long side is at least this many times the
#: short one. Break-even in FLOPs (5 steps, one restart) is about 1.5; measured in bf16 on
#: the 2-core CPU: 320x960 1.3x and 320x1280 1.4x faster, 320x320 1.25x slower.
GRAM_ASPECT = 2.0

#: The Gram iteration is restarted (``X = Q X_0``, ``R = X X^T`` recomputed) before this
#: step, as in Dao lab's Gram Newton-Schulz: without it bf16 rounding compounds through
#: the polynomial recursion (measured: relative error 2.9 instead of 0.075 after 5 steps).
GRAM_RESTART = 2


def _check_matrices(G: Tensor) -> None:
    if G.ndim not in (2, 3):
        raise ValueError(f"Invalid G: newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coeffs: Sequence[float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    method: str = "standard",
) -> Tensor:
    r"""Approximate the orthogonal polar factor :math:`UV^\top` of ``G`` (or of each matrix of a batch).

    .. math::
        X_0 = G / \max(\lVert G\rVert_F, \epsilon), \qquad
        A = X_k X_k^\top, \quad X_{k+1} = a X_k + (bA + cA^2) X_k

    A wide orientation is used (a tall matrix is transposed and back), so the Gram
    matrix :math:`A` is the small one. With the default coefficients the singular
    values land in roughly [0.7, 1.2] rather than exactly 1, which is what Muon wants.

    Args:
        G: a matrix ``(m, n)`` or a batch ``(k, m, n)``; the Frobenius norm is per matrix.
        steps: number of iterations (default 5).
        coeffs: ``(a, b, c)`` (default :data:`NS_COEFFICIENTS`).
        eps: floor of the norm, so a zero matrix maps to zero.
        dtype: the dtype to iterate in (default: ``G``'s); the result has this dtype.
        method: ``"standard"`` (above), ``"gram"`` (:func:`gram_newton_schulz`, the same
            polynomial with fewer FLOPs on rectangular matrices) or ``"auto"`` (``"gram"``
            where the long side is at least :data:`GRAM_ASPECT` times the short one).

    Returns:
        A new tensor of ``G``'s shape.

    Example:
        >>> O = newton_schulz(torch.randn(4, 3, dtype=torch.float64))
        >>> bool(((torch.linalg.svdvals(O) > 0.6) & (torch.linalg.svdvals(O) < 1.3)).all())
        True
    """
    _check_matrices(G)
    if method not in NS_METHODS:
        raise ValueError(f"Invalid ns_method: {method!r} (must be one of {', '.join(map(repr, NS_METHODS))})")
    short, long = sorted(G.shape[-2:])
    if method == "gram" or (method == "auto" and long >= GRAM_ASPECT * short):
        return gram_newton_schulz(G, steps, coeffs, eps, dtype)
    a, b, c = coeffs
    X = G.to(dtype) if dtype is not None and dtype != G.dtype else G.clone()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    if X.ndim == 2:
        X = X.div_(X.norm().clamp(min=eps))
        gram, mm = torch.mm, torch.addmm
    else:
        X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        gram, mm = torch.bmm, torch.baddbmm
    # preallocated outputs: fresh large CPU allocations cost page faults every iteration
    A = X.new_empty((*X.shape[:-1], X.shape[-2]))
    B = torch.empty_like(A)
    Y = X.new_empty(X.shape)
    for _ in range(steps):
        gram(X, X.mT, out=A)
        mm(A, A, A, beta=b, alpha=c, out=B)
        mm(X, B, X, beta=a, out=Y)
        X, Y = Y, (X if X.is_contiguous() else X.new_empty(X.shape))
    return X.mT if tall else X


def gram_newton_schulz(
    G: Tensor,
    steps: int = 5,
    coeffs: Sequence[float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r""":func:`newton_schulz` evaluated on the small Gram matrix ("Gram Newton–Schulz").

    With :math:`X_0` the normalized wide matrix (:math:`m \le n`) and :math:`A_k = X_kX_k^\top`,
    the quintic step is :math:`X_{k+1} = P_kX_k` with :math:`P_k = aI + bA_k + cA_k^2`, a
    polynomial in :math:`A_k`; so :math:`X_k = Q_kX_0` with :math:`Q_{k+1} = P_kQ_k` and
    :math:`A_{k+1} = P_kA_kP_k`, all :math:`m\times m`. Only the first Gram matrix, one
    restart (:data:`GRAM_RESTART`: :math:`X = QX_0`, :math:`A = XX^\top` afresh, which keeps
    bf16 rounding from compounding) and the final :math:`QX` touch the :math:`m\times n`
    matrix: 4 products of :math:`m^2n` and 14 of :math:`m^3` for 5 steps, against 10 and
    5 for the standard form. In exact arithmetic the result is the same; in float64 it
    agrees to ~1e-13, in bf16 its error against the exact polynomial is of the same order
    as the standard form's (tested). Faster when :math:`n \gtrsim 1.5m`.

    References:
        Dao lab (2026), "Gram Newton-Schulz: A Fast, Hardware-Aware Newton-Schulz
        Algorithm for Muon", https://tridao.me/blog/2026/gram-newton-schulz/.

    Example:
        >>> G = torch.randn(8, 32, dtype=torch.float64)
        >>> torch.allclose(gram_newton_schulz(G), newton_schulz(G), atol=1e-10)
        True
    """
    _check_matrices(G)
    a, b, c = coeffs
    X = G.to(dtype) if dtype is not None and dtype != G.dtype else G
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    mm, addmm = (torch.mm, torch.addmm) if X.ndim == 2 else (torch.bmm, torch.baddbmm)
    R = mm(X, X.mT)
    Q: Tensor | None = None
    for k in range(steps):
        if k == GRAM_RESTART and Q is not None:
            X = mm(Q, X)
            R = mm(X, X.mT)
            Q = None
        Z = addmm(R, R, R, beta=b, alpha=c)  # bA + cA^2
        P = Z.clone()
        P.diagonal(dim1=-2, dim2=-1).add_(a)  # aI + bA + cA^2
        Q = P if Q is None else addmm(Q, Z, Q, beta=a)
        if k + 1 < steps and k + 1 != GRAM_RESTART:
            R = mm(P, mm(R, P))
    X = X if Q is None else mm(Q, X)
    return X.mT if tall else X


def muon_lr_scale(shape: Sequence[int], adjust_lr_fn: str | None) -> float:
    r"""The shape factor of Muon's step for a parameter of ``shape`` (rows ``A``, the rest ``B``).

    ``None``/``"original"``: :math:`\sqrt{\max(1, A/B)}` (Keller Jordan);
    ``"match_rms_adamw"``: :math:`0.2\sqrt{\max(A, B)}` (Liu et al. 2025, so AdamW's lr carries over).
    A conv kernel ``(out, in, kh, kw)`` counts as ``A = out``, ``B = in·kh·kw``.
    """
    rows = shape[0]
    cols = math.prod(shape[1:])
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"Invalid adjust_lr_fn: {adjust_lr_fn!r} (must be None, 'original' or 'match_rms_adamw')")


def muon_ns_dtype(ns_dtype: torch.dtype | None, param: Tensor) -> torch.dtype:
    """The dtype the iteration runs in when ``ns_dtype`` is ``None`` ("auto").

    bfloat16 (as torch and Keller Jordan) on CUDA and on CPUs with native bf16 matmul
    (AVX512-BF16/AMX; measured 2.2-3.3x faster than float32 for 384-2048 wide batches
    on the 2-core AVX512 machine); float32 on CPUs without it (bf16 would be
    emulated); float64 parameters keep float64 (for exact references).
    """
    if ns_dtype is not None:
        return ns_dtype
    if param.dtype == torch.float64:
        return torch.float64
    if param.device.type == "cpu" and not _cpu_bf16():
        return torch.float32
    return torch.bfloat16


def _cpu_bf16() -> bool:
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            _CPU_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _CPU_BF16 = False
    return _CPU_BF16


_CPU_BF16: bool | None = None


def _direction(grad: Tensor, momentum_buffer: Tensor, momentum: float, nesterov: bool) -> Tensor:
    momentum_buffer.lerp_(grad, 1 - momentum)
    return grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer


def muon(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    adjust_lr_fn: str | None = None,
    ns_dtype: torch.dtype | None = None,
    ns_method: str = "standard",
    maximize: bool = False,
) -> None:
    r"""One Muon step on a matrix (or a conv kernel, flattened to ``(out, -1)``), in place.

    .. math::
        B_t &= \mu B_{t-1} + (1-\mu) g_t, \qquad
        U_t = (1-\mu) g_t + \mu B_t \ (\text{Nesterov}) \text{ or } B_t \\
        \theta_t &\leftarrow \theta_{t-1}(1 - \eta\lambda) - \eta\, s(\text{shape})\,
            \mathrm{NS}_k(U_t)

    This is torch's form (an EMA buffer, as ``torch.optim.Muon``); Keller Jordan's
    ``B = μB + g`` differs from it only by the constant factor the normalization removes.

    Args:
        param: the parameter (``ndim >= 2``), updated in place.
        grad: its gradient (not modified).
        momentum_buffer: :math:`B`, updated in place.
        lr, weight_decay, momentum: :math:`\eta, \lambda, \mu`.
        nesterov: use the look-ahead :math:`U_t`.
        ns_coefficients, ns_steps, eps: of :func:`newton_schulz`.
        adjust_lr_fn: the shape factor :math:`s`, see :func:`muon_lr_scale`.
        ns_dtype: iteration dtype (default: :func:`muon_ns_dtype`).
        ns_method: how to evaluate the iteration (see :func:`newton_schulz`).
        maximize: ascend instead.

    Example:
        >>> p, g, buf = torch.zeros(3, 3), torch.eye(3), torch.zeros(3, 3)
        >>> muon(p, g, buf, lr=0.1, ns_dtype=torch.float32)
        >>> bool((p.diagonal() < 0).all())
        True
    """
    if maximize:
        grad = -grad
    update = _direction(grad, momentum_buffer, momentum, nesterov)
    matrix = update.reshape(update.size(0), -1)
    ortho = newton_schulz(matrix, ns_steps, ns_coefficients, eps, muon_ns_dtype(ns_dtype, param), ns_method)
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    param.add_(ortho.reshape(param.shape), alpha=-lr * muon_lr_scale(param.shape, adjust_lr_fn))


def muon_batched(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    adjust_lr_fn: str | None = None,
    ns_dtype: torch.dtype | None = None,
    ns_method: str = "standard",
    maximize: bool = False,
) -> None:
    """:func:`muon` over many parameters: matrices of one shape are orthogonalized as one batch.

    The same update as calling :func:`muon` on each parameter, except that matrices with
    equal ``(rows, cols)`` (a kernel counts as ``(out, in·kh·kw)``) share one batched
    Newton–Schulz call (up to :data:`BATCH_LIMIT`; the same numbers in float32/float64 to
    rounding; in bfloat16 the batched matmul rounds differently from one-at-a-time now and
    then, by one bf16 ulp), and the momentum and weight decay run as multi-tensor
    ops. All tensors must share device and dtype. Zero-size parameters are skipped.

    Example:
        >>> ps = [torch.zeros(4, 2) for _ in range(3)]
        >>> gs, bufs = [torch.randn(4, 2) for _ in ps], [torch.zeros(4, 2) for _ in ps]
        >>> muon_batched(ps, gs, bufs, lr=0.1)
    """
    keep = [i for i, p in enumerate(params) if p.numel() > 0]
    if not keep:
        return
    params = [params[i] for i in keep]
    grads = [-grads[i] for i in keep] if maximize else [grads[i] for i in keep]
    bufs = [momentum_buffers[i] for i in keep]
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(params):
        by_shape.setdefault((p.shape[0], p.numel() // p.shape[0]), []).append(i)
    dtype = muon_ns_dtype(ns_dtype, params[0])
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)

    def update(i: int, rows: int, cols: int) -> Tensor:  # made when needed: fewer live temporaries
        u = grads[i].lerp(bufs[i], momentum) if nesterov else bufs[i]
        return u.reshape(rows, cols)

    for (rows, cols), idx in by_shape.items():
        if len(idx) == 1 or min(rows, cols) ** 2 * max(rows, cols) >= BATCH_LIMIT:
            outs: Iterable[Tensor] = (newton_schulz(update(i, rows, cols), ns_steps, ns_coefficients, eps, dtype,
                                                    ns_method) for i in idx)
        else:
            stacked = torch.stack([update(i, rows, cols) for i in idx])
            outs = newton_schulz(stacked, ns_steps, ns_coefficients, eps, dtype, ns_method).unbind(0)
        for i, o in zip(idx, outs):
            p = params[i]
            p.add_(o.reshape(p.shape), alpha=-lr * muon_lr_scale(p.shape, adjust_lr_fn))
