"""Float64 reference rules for Lion, LAMB, Adafactor and Sophia-G.

Written from the papers' pseudo-code (Chen et al. 2023 Alg. 2; You et al. 2020 Alg. 2;
Shazeer & Stern 2018 Alg. 4-5 with the relative step of Sec. 8 and the RMS clip of
Sec. 6; Liu et al. 2023 Alg. 3), in plain NumPy with the natural (fused-looking)
operation order, so they share no code or rounding order with descent.
"""

from __future__ import annotations

import math

import numpy as np


def lion_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """Lion: interpolate, take the sign, then update the momentum with beta2."""
    b1, b2 = hp["betas"]
    g = -g if hp.get("maximize") else g
    m = st.setdefault("exp_avg", np.zeros_like(x))
    c = b1 * m + (1 - b1) * g
    x *= 1 - hp["lr"] * hp["weight_decay"]
    x -= hp["lr"] * np.sign(c)
    st["exp_avg"] = b2 * m + (1 - b2) * g


def lamb_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """LAMB with bias correction and phi = identity or min(., clamp_value)."""
    b1, b2 = hp["betas"]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x))
    st["step"] += 1
    t = st["step"]
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
    st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g**2
    bc = hp.get("bias_correction", True)
    m_hat = st["exp_avg"] / (1 - b1**t if bc else 1)
    v_hat = st["exp_avg_sq"] / (1 - b2**t if bc else 1)
    r = m_hat / (np.sqrt(v_hat) + hp["eps"]) + hp["weight_decay"] * x
    w_norm, r_norm = np.linalg.norm(x), np.linalg.norm(r)
    if hp.get("clamp_value") is not None:
        w_norm = min(w_norm, hp["clamp_value"])
    ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
    x -= hp["lr"] * ratio * r


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a**2)))


def adafactor_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """Adafactor (paper Alg. 4 for matrices over the last two axes, Alg. 5 for vectors)."""
    if x.size == 0:
        st.setdefault("step", 0)
        st["step"] += 1
        return
    g = -g if hp.get("maximize") else g
    eps1, eps2 = hp["eps"]
    factored = x.ndim >= 2
    if not st:
        st["step"] = 0
        if factored:
            st["row_var"] = np.zeros(x.shape[:-1] + (1,))
            st["col_var"] = np.zeros(x.shape[:-2] + (1, x.shape[-1]))
        else:
            st["variance"] = np.zeros_like(x)
        if hp["beta1"] is not None:
            st["exp_avg"] = np.zeros_like(x)
    st["step"] += 1
    t = st["step"]
    if hp["relative_step"]:
        rho = min(1e-6 * t if hp["warmup_init"] else 1e-2, 1 / math.sqrt(t))
    else:
        rho = hp["lr"]
    alpha = max(eps2, _rms(x)) * rho if hp["scale_parameter"] else rho
    beta2 = 1 - t ** hp["decay_rate"]
    sq = g**2 + eps1
    if factored:
        st["row_var"] = beta2 * st["row_var"] + (1 - beta2) * sq.mean(axis=-1, keepdims=True)
        st["col_var"] = beta2 * st["col_var"] + (1 - beta2) * sq.mean(axis=-2, keepdims=True)
        v = st["row_var"] * st["col_var"] / st["row_var"].mean(axis=-2, keepdims=True)
    else:
        st["variance"] = beta2 * st["variance"] + (1 - beta2) * sq
        v = st["variance"]
    u = g / np.sqrt(v)
    u = u / max(1.0, _rms(u) / hp["clip_threshold"])
    step = alpha * u
    if hp["beta1"] is not None:
        st["exp_avg"] = hp["beta1"] * st["exp_avg"] + (1 - hp["beta1"]) * step
        step = st["exp_avg"]
    x *= 1 - hp["weight_decay"] * alpha
    x -= step


def sophia_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """Sophia-G step (the Hessian EMA, ``st['hessian']``, is refreshed elsewhere)."""
    b1 = hp["betas"][0]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), hessian=np.zeros_like(x))
    st["step"] += 1
    x *= 1 - hp["lr"] * hp["weight_decay"]
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
    m, h = st["exp_avg"], np.maximum(st["hessian"], 0.0)
    x -= hp["lr"] * np.sign(m) * np.minimum(np.abs(m) / (hp["rho"] * hp["bs"] * h + hp["eps"]), 1.0)


def sophia_hessian_rule(st: dict, g: np.ndarray, beta2: float) -> None:
    """GNB refresh: h <- beta2 h + (1 - beta2) g*g."""
    st["hessian"] = beta2 * st["hessian"] + (1 - beta2) * g * g
