"""Float64 reference rules for Muon and Shampoo, written from the papers in NumPy.

Muon: Jordan et al. (2024), the blog post's algorithm with torch's EMA momentum form
(``B = mu B + (1 - mu) g``, Nesterov ``U = (1 - mu) g + mu B``), the quintic
Newton-Schulz iteration ``X <- aX + (bA + cA^2)X`` with ``A = XX^T`` on the wide
orientation of the Frobenius-normalized matrix, decoupled decay, and the shape factor
``sqrt(max(1, A/B))`` or ``0.2 sqrt(max(A, B))`` (Liu et al. 2025).

Shampoo: Gupta, Koren & Singer (2018), Algorithm 2 (one statistic per tensor dimension,
``H_i^{-1/(2k)}``), with the variations descent documents: EMA statistics, blocking at
``block_size``, per-block norm grafting (Anil et al. 2020) onto Adam or SGD, Adam-style
diagonal fallback for vectors, bias-corrected momentum after grafting.
"""

from __future__ import annotations

import itertools

import numpy as np


def newton_schulz_np(G: np.ndarray, steps: int, coeffs, eps: float) -> np.ndarray:
    """Quintic Newton-Schulz in float64."""
    a, b, c = coeffs
    X = G.astype(np.float64).copy()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(np.linalg.norm(X), eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def muon_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """Muon on a matrix or a kernel flattened to (out, -1)."""
    g = -g if hp.get("maximize") else g
    mu = hp["momentum"]
    st.setdefault("momentum_buffer", np.zeros_like(x))
    st["momentum_buffer"] = mu * st["momentum_buffer"] + (1 - mu) * g
    u = (1 - mu) * g + mu * st["momentum_buffer"] if hp["nesterov"] else st["momentum_buffer"]
    if x.size == 0:
        return
    rows, cols = x.shape[0], x.size // x.shape[0]
    O = newton_schulz_np(u.reshape(rows, cols), hp["ns_steps"], hp["ns_coefficients"], hp["eps"])
    if hp.get("adjust_lr_fn") == "match_rms_adamw":
        scale = 0.2 * np.sqrt(max(rows, cols))
    else:
        scale = np.sqrt(max(1.0, rows / cols))
    x *= 1 - hp["lr"] * hp["weight_decay"]
    x -= hp["lr"] * scale * O.reshape(x.shape)


def _blocks(shape: tuple[int, ...], block_size: int) -> list[tuple[slice, ...]]:
    ranges = [[slice(i, min(i + block_size, n)) for i in range(0, n, block_size)] if n > block_size
              else [slice(0, n)] for n in shape]
    return list(itertools.product(*ranges))


def _inv_root(L: np.ndarray, r: int, eps: float) -> np.ndarray:
    w, V = np.linalg.eigh((L + L.T) / 2)
    return (V * (np.maximum(w, 0) + eps) ** (-1.0 / r)) @ V.T


def shampoo_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """Shampoo with grafting, blocking and the diagonal fallback (see the module docstring)."""
    if x.size == 0:
        return
    b1, b2 = hp["betas"]
    lr, bs, graft = hp["lr"], hp["block_size"], hp["grafting"]
    g = -g if hp.get("maximize") else g
    blocks = _blocks(x.shape, bs) if x.ndim >= 2 else []
    dims = [[d for d in range(x.ndim) if x[b].shape[d] > 1] for b in blocks]
    diagonal = x.ndim < 2 or not any(dims)
    if not st:
        st["step"] = 0
        st["exp_avg"] = np.zeros_like(x)
        k = 0
        for b, ds in zip(blocks, dims):
            for d in ds:
                n = x[b].shape[d]
                st[f"preconditioner_{k}"], st[f"inv_root_{k}"] = np.zeros((n, n)), np.eye(n)
                k += 1
        if diagonal or graft == "adam":
            st["exp_avg_sq"] = np.zeros_like(x)
    st["step"] += 1
    t = st["step"]
    x *= 1 - lr * hp["weight_decay"]
    adam = None
    if diagonal or graft == "adam":
        st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
        adam = g / (np.sqrt(st["exp_avg_sq"] / (1 - b2**t)) + hp["graft_eps"])
    if diagonal:
        D = adam
    else:
        ref = adam if graft == "adam" else g
        D = np.empty_like(g)
        k = 0
        for b, ds in zip(blocks, dims):
            G = g[b]
            if not ds:
                D[b] = ref[b]
                continue
            u = G
            for d in ds:
                others = [o for o in range(G.ndim) if o != d]
                L = b2 * st[f"preconditioner_{k}"] + (1 - b2) * np.tensordot(G, G, axes=(others, others))
                st[f"preconditioner_{k}"] = L
                if (t - 1) % hp["update_freq"] == 0:
                    st[f"inv_root_{k}"] = _inv_root(L, 2 * len(ds), hp["eps"])
                u = np.moveaxis(np.tensordot(st[f"inv_root_{k}"], u, axes=([1], [d])), 0, d)
                k += 1
            if graft is not None:
                nu = np.linalg.norm(u)
                u = u * (np.linalg.norm(ref[b]) / nu) if nu > 0 else ref[b]
            D[b] = u
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * D
    x -= lr * st["exp_avg"] / (1 - b1**t)
