"""Float64 reference rules for the first-order optimizers.

Written from the update rules as the source documents state them
(shared/reference/seeds 000, 002, 003: momentum ``v = mu v + g; w -= lr v``,
Nesterov, AdaGrad ``G += g^2; w -= lr g / (sqrt(G) + eps)``, RMSprop, Adam with bias
correction, AdamW with decoupled decay) and the papers; see each docstring.
"""

from __future__ import annotations

import numpy as np


def sgd_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """SGD with momentum/dampening/Nesterov and coupled L2 (Sutskever et al. 2013)."""
    d = -g if hp.get("maximize") else g.copy()
    d = d + hp["weight_decay"] * x
    mu = hp["momentum"]
    if mu:
        if "momentum_buffer" not in st:
            st["momentum_buffer"] = d.copy()
        else:
            st["momentum_buffer"] = mu * st["momentum_buffer"] + (1 - hp["dampening"]) * d
        d = d + mu * st["momentum_buffer"] if hp["nesterov"] else st["momentum_buffer"]
    x -= hp["lr"] * d


def adam_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """Adam / AMSGrad / AdamW (Kingma & Ba 2015, Algorithm 1; Loshchilov & Hutter 2019, Alg. 2)."""
    b1, b2 = hp["betas"]
    lr, wd = hp["lr"], hp["weight_decay"]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x))
    st["step"] += 1
    t = st["step"]
    if hp.get("decoupled_weight_decay"):
        x *= 1 - lr * wd
    else:
        g = g + wd * x
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
    st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
    v = st["exp_avg_sq"]
    if hp.get("amsgrad"):
        st["max_exp_avg_sq"] = np.maximum(st.get("max_exp_avg_sq", np.zeros_like(x)), v)
        v = st["max_exp_avg_sq"]
    m_hat = st["exp_avg"] / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    x -= lr * m_hat / (np.sqrt(v_hat) + hp["eps"])


def adagrad_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """AdaGrad (Duchi et al. 2011) with torch's lr_decay and initial accumulator."""
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, sum=np.full_like(x, hp["initial_accumulator_value"]))
    st["step"] += 1
    g = g + hp["weight_decay"] * x
    st["sum"] = st["sum"] + g * g
    lr = hp["lr"] / (1 + (st["step"] - 1) * hp["lr_decay"])
    x -= lr * g / (np.sqrt(st["sum"]) + hp["eps"])


def rmsprop_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """RMSprop (Tieleman & Hinton 2012), centered form (Graves 2013), with momentum."""
    a, mu = hp["alpha"], hp["momentum"]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, square_avg=np.zeros_like(x), grad_avg=np.zeros_like(x),
                  momentum_buffer=np.zeros_like(x))
    st["step"] += 1
    g = g + hp["weight_decay"] * x
    st["square_avg"] = a * st["square_avg"] + (1 - a) * g * g
    var = st["square_avg"]
    if hp["centered"]:
        st["grad_avg"] = a * st["grad_avg"] + (1 - a) * g
        var = var - st["grad_avg"] ** 2
    denom = np.sqrt(var) + hp["eps"]
    if mu > 0:
        st["momentum_buffer"] = mu * st["momentum_buffer"] + g / denom
        x -= hp["lr"] * st["momentum_buffer"]
    else:
        x -= hp["lr"] * g / denom
