"""``descent.RMSprop``: a drop-in for ``torch.optim.RMSprop``."""

from __future__ import annotations

from typing import Any

import torch
import torch.optim.rmsprop as _torch_rmsprop
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ._validate import check_nonneg
from ._backend import floating
from ._base import Optimizer, reject_unsupported, step_tensor


class RMSprop(Optimizer):
    r"""RMSprop with optional centering and momentum.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\qquad
        \theta_{t+1} = \theta_t - \eta\, g_t / (\sqrt{v_t - \bar g_t^2\,[\text{centered}]} + \epsilon)

    (with momentum, the scaled gradient feeds a buffer :math:`b_t = \mu b_{t-1} + g_t/d_t`).
    Arguments, defaults and state keys (``step``, ``square_avg``, ``grad_avg``,
    ``momentum_buffer``) are torch's. torch has no fused RMSprop kernel; descent's
    default on CPU (``"fused"``) is one single-pass Numba call over the bucket, in torch's
    operation order (equal to the loop to float64 rounding; the loop is the fallback for
    other dtypes and without Numba).

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-2).
        alpha: smoothing constant :math:`\alpha` (default 0.99).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: coupled L2 (default 0).
        momentum: :math:`\mu` (default 0).
        centered: normalise by the estimated variance instead of the raw second moment.
        foreach, maximize, backend, skip_nonfinite: see :class:`descent.SGD`.

    References:
        Tieleman & Hinton (2012), Lecture 6.5; Graves (2013), "Generating Sequences
        With Recurrent Neural Networks" (centered form).

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = descent.RMSprop([w], lr=0.01, alpha=0.9)
        >>> w.sum().backward(); _ = opt.step()
    """

    _supported = {"loop": floating, "foreach": floating, "fused": K.numba_cpu}

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        reject_unsupported("RMSprop", capturable=capturable, differentiable=differentiable)
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, foreach=foreach, maximize=maximize, backend=backend,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        for name in ("lr", "eps", "weight_decay", "momentum"):
            check_nonneg(name, group[name])
        check_nonneg("alpha", group["alpha"])
        if group["alpha"] > 1:
            raise ValueError(f"Invalid alpha: {group['alpha']} (must be in [0, 1])")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"step": step_tensor(p), "square_avg": torch.zeros_like(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p)
        return state

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> None:
        momentum, centered = group["momentum"], group["centered"]
        for p, s in zip(params, states):  # options switched on mid-run
            if momentum > 0 and "momentum_buffer" not in s:
                s["momentum_buffer"] = torch.zeros_like(p)
            if centered and "grad_avg" not in s:
                s["grad_avg"] = torch.zeros_like(p)
        hp = dict(lr=float(group["lr"]), alpha=group["alpha"], eps=group["eps"],
                  weight_decay=group["weight_decay"], momentum=momentum, centered=centered,
                  maximize=group["maximize"])
        if backend == "fused":
            self._fused(group, params, grads, states, hp)
            return
        if backend == "loop":
            for p, g, s in zip(params, grads, states):
                s["step"] += 1
                F.rmsprop(p, g, s["square_avg"], s.get("grad_avg"), s.get("momentum_buffer"), **hp)
            return
        _torch_rmsprop.rmsprop(
            params, grads, [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if centered else [],
            [s["momentum_buffer"] for s in states] if momentum > 0 else [],
            [s["step"] for s in states], foreach=True, **hp,
        )

    @staticmethod
    def _fused(group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
               hp: dict[str, Any]) -> None:
        """One Numba call over the bucket (:func:`descent.kernels.elementwise.rmsprop_multi`)."""
        torch._foreach_add_([s["step"] for s in states], 1.0)
        cols = [[s["square_avg"] for s in states], [s.get("grad_avg") for s in states],
                [s.get("momentum_buffer") for s in states]]
        fused, rest = K.partition(params, grads, *cols)
        if fused:
            from ..kernels.elementwise import rmsprop_multi

            centered, use_m = bool(hp["centered"]), hp["momentum"] > 0
            K.run_elementwise(rmsprop_multi, [params, grads, cols[0], cols[1] if centered else None,
                                              cols[2] if use_m else None], fused,
                              (hp["lr"], hp["alpha"], 1 - hp["alpha"], hp["eps"], hp["weight_decay"], hp["momentum"],
                               -1.0 if hp["maximize"] else 1.0), (centered, use_m))
        for i in rest:
            F.rmsprop(params[i], grads[i], cols[0][i], cols[1][i], cols[2][i], **hp)
