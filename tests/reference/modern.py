"""Float64 reference rules for the optimizers of 2024: ADOPT, AdEMAMix, MARS, schedule-free, Prodigy.

Written from the papers' pseudo-code (Taniguchi et al. 2024 Alg. 2 with the authors'
clip t^0.25; Pagliardini et al. 2024 Alg. 1 and Eq. 3 / App. A.1 schedulers; Yuan et al.
2024 Alg. 2, MARS-AdamW with the previous batch's gradient; Defazio et al. 2024 Alg. 1
(schedule-free, primal averaging in x/z form, not the y-only rewrite descent uses);
Mishchenko & Defazio 2024 Alg. 4 (Prodigy-Adam, with the d0-scaled weights of the
authors' release)) and Liang et al. 2024 (cautious masking) in plain NumPy. They share
no code with descent. Schedule-free and Prodigy keep per-group scalars, so they are
small ``torch.optim.Optimizer`` classes rather than per-parameter rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64).copy()


def cautious_np(u: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Keep the coordinates where u and g agree in sign, rescaled by n / (count + 1)."""
    mask = (u * g > 0).astype(np.float64)
    return u * mask * (mask.size / (mask.sum() + 1.0))


def adopt_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """ADOPT: v_0 = g_0^2; then m <- b1 m + (1-b1) clip(g / max(sqrt(v), eps)); x -= lr m; v <- EMA(g^2)."""
    b1, b2 = hp["betas"]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x))
    st["step"] += 1
    t, lr, wd = st["step"], hp["lr"], hp["weight_decay"]
    if wd:
        if hp["decouple"]:
            x *= 1 - lr * wd
        else:
            g = g + wd * x
    if t == 1:
        st["exp_avg_sq"] = g * g
        return
    ghat = g / np.maximum(np.sqrt(st["exp_avg_sq"]), hp["eps"])
    if hp["clip_exponent"] is not None:
        c = t ** hp["clip_exponent"]
        ghat = np.clip(ghat, -c, c)
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * ghat
    u = cautious_np(st["exp_avg"], g) if hp["cautious"] else st["exp_avg"]
    x -= lr * u
    st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g


def ademamix_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """AdEMAMix with the alpha (linear) and beta3 (half-life linear) warm-up of length T."""
    b1, b2, b3 = hp["betas"]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x), exp_avg_slow=np.zeros_like(x))
    st["step"] += 1
    t, T, alpha = st["step"], hp["t_alpha_beta3"], hp["alpha"]
    if T is not None and t < T:
        alpha_t = alpha * t / T
        # the half-life ln(0.5)/ln(beta3_t) grows linearly from beta1's to beta3's (App. A.1)
        inv = (1 - t / T) / math.log(b1) + (t / T) / math.log(b3)
        beta3_t = min(math.exp(1.0 / inv), b3)
    else:
        alpha_t, beta3_t = alpha, b3
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
    st["exp_avg_slow"] = beta3_t * st["exp_avg_slow"] + (1 - beta3_t) * g
    st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
    m1 = cautious_np(st["exp_avg"], g) if hp["cautious"] else st["exp_avg"]
    m1_hat = m1 / (1 - b1**t)
    nu_hat = st["exp_avg_sq"] / (1 - b2**t)
    x -= hp["lr"] * ((m1_hat + alpha_t * st["exp_avg_slow"]) / (np.sqrt(nu_hat) + hp["eps"]) + hp["weight_decay"] * x)


def mars_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """MARS-AdamW (approx): c = g + gamma b1/(1-b1) (g - g_prev), clipped to norm 1, then AdamW on c."""
    b1, b2 = hp["betas"]
    g = -g if hp.get("maximize") else g
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x), last_grad=np.zeros_like(x))
    st["step"] += 1
    t = st["step"]
    c = g + hp["gamma"] * b1 / (1 - b1) * (g - st["last_grad"])
    n = np.linalg.norm(c)
    if n > 1:
        c = c / n
    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * c
    st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * c * c
    m = cautious_np(st["exp_avg"], g) if hp["cautious"] else st["exp_avg"]
    m_hat, v_hat = m / (1 - b1**t), st["exp_avg_sq"] / (1 - b2**t)
    x -= hp["lr"] * (m_hat / (np.sqrt(v_hat) + hp["eps"]) + hp["weight_decay"] * x)
    st["last_grad"] = g.copy()


class ScheduleFreeReference(torch.optim.Optimizer):
    """Schedule-free SGD/AdamW in the paper's x/z form: y = (1-b) z + b x, z -= lr g(y), x = (1-c) x + c z.

    The parameter holds y (train mode) or x (eval mode); x and z live in the state.
    ``adam=True`` normalizes the gradient by Adam's bias-corrected second moment.
    """

    def __init__(self, params: Any, adam: bool, **defaults: Any) -> None:
        defaults.setdefault("warmup_steps", 0)
        defaults.setdefault("r", 0.0)
        defaults.setdefault("weight_lr_power", 2.0)
        defaults.setdefault("weight_decay", 0.0)
        self._adam = adam
        super().__init__(params, {**defaults, "k": 0, "lr_max": 0.0, "weight_sum": 0.0, "train_mode": True})

    def _beta(self, group: dict) -> float:
        return group["betas"][0] if self._adam else group["momentum"]

    @torch.no_grad()
    def eval(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "x" in self.state[p]:
                    p.copy_(torch.from_numpy(self.state[p]["x"]))
            group["train_mode"] = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        for group in self.param_groups:
            k = group["k"]
            lr = group["lr"] * min(1.0, (k + 1) / group["warmup_steps"]) if group["warmup_steps"] else group["lr"]
            group["lr_max"] = max(group["lr_max"], lr)
            w = (k + 1) ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
            group["weight_sum"] += w
            c = w / group["weight_sum"] if group["weight_sum"] else 0.0
            beta = self._beta(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                y = _np(p)
                if not st:
                    st.update(x=y.copy(), z=y.copy(), v=np.zeros_like(y))
                g = _np(p.grad)
                g = -g if group.get("maximize") else g
                if self._adam:
                    b2 = group["betas"][1]
                    st["v"] = b2 * st["v"] + (1 - b2) * g * g
                    g = g / (np.sqrt(st["v"] / (1 - b2 ** (k + 1))) + group["eps"])
                g = g + group["weight_decay"] * y
                st["z"] = st["z"] - lr * g
                st["x"] = (1 - c) * st["x"] + c * st["z"]
                y = (1 - beta) * st["z"] + beta * st["x"]
                p.copy_(torch.from_numpy(y))
                st["exp_avg_sq"] = st["v"]
            group["k"] = k + 1


def schedule_free_reference(adam: bool, **base: Any):
    """A constructor ``(params, **hp) -> ScheduleFreeReference``."""

    def make(params: Any, **hp: Any) -> ScheduleFreeReference:
        return ScheduleFreeReference(params, adam, **{**base, **hp})

    return make


class ProdigyReference(torch.optim.Optimizer):
    """Prodigy-Adam (Alg. 4 with the d0-scaled weights of the authors' release), d shared by all groups.

    Each group's step is d * lr_group (equal to the paper when all lrs are equal).
    """

    def __init__(self, params: Any, **hp: Any) -> None:
        base = dict(lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0, decouple=True,
                    use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf)
        super().__init__(params, {**base, **hp})
        self._d = self.param_groups[0]["d0"]
        self._d_max = self._d
        self._r = 0.0
        self._k = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        g0 = self.param_groups[0]
        b1, b2 = g0["betas"]
        b3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(b2)
        d, d0, k = self._d, g0["d0"], self._k
        bc = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if g0["use_bias_correction"] else 1.0
        r, s_norm, live = b3 * self._r, 0.0, []
        for group in self.param_groups:
            eta = d * group["lr"] * bc
            for p in group["params"]:
                if p.grad is None:
                    continue
                x, g, st = _np(p), _np(p.grad), self.state[p]
                g = -g if group.get("maximize") else g
                if group["weight_decay"] and not group["decouple"]:
                    g = g + group["weight_decay"] * x
                if not st:
                    st.update(p0=x.copy(), s=np.zeros_like(x), exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x))
                live.append((group, p, x, g, st, eta))
                if eta == 0:
                    continue
                r += (d / d0) * eta * float(np.dot(g.ravel(), (st["p0"] - x).ravel()))
                st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * d * g
                st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * d * d * g * g
                st["s"] = b3 * st["s"] + (d / d0) * (d if group["safeguard_warmup"] else eta) * g
                s_norm += float(np.abs(st["s"]).sum())
        if s_norm == 0:
            return
        d_hat = g0["d_coef"] * r / s_norm
        if d == d0:
            d = max(d, d_hat)
        self._d_max = max(self._d_max, d_hat)
        d = min(self._d_max, d * g0["growth_rate"])
        self._d, self._r, self._k = d, r, k + 1
        for group, p, x, g, st, eta in live:
            denom = np.sqrt(st["exp_avg_sq"]) + d * group["eps"]
            if group["weight_decay"] and group["decouple"]:
                x = x - group["weight_decay"] * eta * x
            x = x - eta * st["exp_avg"] / denom
            p.copy_(torch.from_numpy(x))


def _soap_merge(shape: tuple, limit: int) -> tuple:
    """The authors' ``merge_dims`` (github.com/nikhilvyas/SOAP ``soap.py``), transcribed."""
    new_shape, curr = [], 1
    for sh in shape:
        if curr * sh > limit:
            if curr > 1:
                new_shape.append(curr)
                curr = sh
            else:
                new_shape.append(sh)
                curr = 1
        else:
            curr = curr * sh
    if curr > 1 or len(new_shape) == 0:
        new_shape.append(curr)
    return tuple(new_shape)


def soap_rule(x: np.ndarray, g: np.ndarray, st: dict, hp: dict) -> None:
    """SOAP (Vyas et al. 2024, Alg. 3; the authors' code for tensors of any order): Adam in the
    eigenbasis of one statistic per dimension, L_d = E[G_(d) G_(d)^T] (for a matrix L = E[G G^T],
    R = E[G^T G]); dimensions over ``max_precond_dim`` are not rotated, ``merge_dims`` merges
    consecutive small dimensions first (2-D and up), ``precondition_1d`` rotates vectors.

    The momentum stays in the original coordinates and is projected every step; the
    second moment lives in the rotated coordinates and is permuted with the columns of
    Q when the bases are refreshed (one power iteration + QR, columns sorted by the
    estimated eigenvalues). A rotated tensor's first step only collects statistics.
    """
    b1, b2 = hp["betas"]
    bs = b2 if hp["shampoo_beta"] is None else hp["shampoo_beta"]
    g = -g if hp.get("maximize") else g
    shape = x.shape
    pshape = _soap_merge(shape, hp["max_precond_dim"]) if hp.get("merge_dims") and x.ndim >= 2 else shape
    gm = g.reshape(pshape)
    if not st:
        st.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros(pshape))
        st["sides"] = {}
        if x.size and (x.ndim >= 2 or (x.ndim == 1 and hp.get("precondition_1d"))):
            for dim, n in enumerate(pshape):
                if n <= hp["max_precond_dim"]:
                    st["sides"][dim] = [np.zeros((n, n)), None]
    st["step"] += 1
    t = st["step"]

    def rot(a: np.ndarray, back: bool) -> np.ndarray:  # a x_d Q_d^T (x_d Q_d back), as the authors' tensordot
        for dim, (_, q) in st["sides"].items():
            a = np.moveaxis(np.tensordot(a, q, axes=([dim], [1 if back else 0])), -1, dim)
        return a

    s = t - 1 if st["sides"] else t  # a tensor without a rotation runs Adam from its first step
    if s >= 1 and x.size:
        st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
        m = st["exp_avg"].reshape(pshape)
        st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * rot(gm, False) ** 2
        d = rot(rot(m, False) / (np.sqrt(st["exp_avg_sq"]) + hp["eps"]), True)
        if hp.get("cautious"):
            d = cautious_np(d, gm)
        size = hp["lr"] * math.sqrt(1 - b2**s) / (1 - b1**s) if hp["correct_bias"] else hp["lr"]
        x -= size * d.reshape(shape)
        x *= 1 - hp["lr"] * hp["weight_decay"]
    for dim, side in st["sides"].items():
        others = [k for k in range(gm.ndim) if k != dim]
        side[0] = bs * side[0] + (1 - bs) * np.tensordot(gm, gm, axes=(others, others))
        if t == 1:
            w, q = np.linalg.eigh(side[0])
            side[1] = q[:, ::-1].copy()
        elif (t - 1) % hp["precondition_frequency"] == 0:
            q = side[1]
            order = np.argsort(-np.diag(q.T @ side[0] @ q), kind="stable")
            st["exp_avg_sq"] = np.take(st["exp_avg_sq"], order, axis=dim)
            side[1] = np.linalg.qr(side[0] @ q[:, order])[0]
