"""``descent.SGD``: a drop-in for ``torch.optim.SGD`` on descent's step loop."""

from __future__ import annotations

from typing import Any

import torch
import torch.optim.sgd as _torch_sgd
from torch import Tensor

from .. import functional as F
from ._validate import check_nonneg
from ._backend import floating, torch_fused_sgd
from ._base import Optimizer, reject_unsupported


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, Nesterov and coupled weight decay.

    .. math::
        g_t = \nabla L(\theta_t) + \lambda\theta_t, \quad
        b_t = \mu b_{t-1} + (1-\tau) g_t \ (b_1 = g_1), \quad
        \theta_{t+1} = \theta_t - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Same arguments, defaults and state (``momentum_buffer``) as ``torch.optim.SGD``, so
    state_dicts move both ways. The default CPU path is torch's fused kernel; unlike
    ``torch.optim.SGD(fused=True)``, a parameter that receives its first gradient
    after the others already have momentum buffers is initialised correctly.

    Args:
        params: parameters or param group dicts.
        lr: learning rate :math:`\eta` (default 1e-3, as torch).
        momentum: :math:`\mu` (default 0).
        dampening: :math:`\tau` (default 0).
        weight_decay: coupled L2 :math:`\lambda` (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective.
        foreach, fused, backend: how the step runs (see :mod:`descent.optim._backend`).
        skip_nonfinite: skip the whole step when any gradient is NaN/Inf and count it
            in ``param_groups[i]["skipped_steps"]``.

    References:
        Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013), "On the
        importance of initialization and momentum in deep learning".

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = descent.SGD([w], lr=0.1, momentum=0.9, nesterov=True)
        >>> (w ** 2).sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([ 0.6200, -1.2400])
    """

    _supported = {"loop": floating, "foreach": floating, "fused": torch_fused_sgd}

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        reject_unsupported("SGD", differentiable=differentiable)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, fused=fused,
                        backend=backend, skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_nonneg("momentum", group["momentum"])
        check_nonneg("dampening", group["dampening"])
        check_nonneg("weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"Invalid nesterov=True with momentum={group['momentum']} and dampening={group['dampening']} "
                "(Nesterov momentum requires momentum > 0 and zero dampening)"
            )

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {}  # momentum_buffer is created on the first step, as torch does

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> None:
        hp = dict(lr=float(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
                  weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"])
        use_buf = hp["momentum"] != 0
        if backend == "loop":
            for p, g, s in zip(params, grads, states):
                buf = F.sgd(p, g, s.get("momentum_buffer"), **hp)
                if use_buf:
                    s["momentum_buffer"] = buf
        elif backend == "foreach":
            bufs = [s.get("momentum_buffer") for s in states]
            _torch_sgd.sgd(params, grads, bufs, foreach=True, **hp)
            if use_buf:
                for s, b in zip(states, bufs):
                    s["momentum_buffer"] = b
        else:
            self._fused(params, grads, states, hp, use_buf)

    @staticmethod
    def _fused(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
               hp: dict[str, Any], use_buf: bool) -> None:
        if not use_buf:
            torch._fused_sgd_(params, grads, [], is_first_step=False, **hp)
            return
        first = [i for i, s in enumerate(states) if s.get("momentum_buffer") is None]
        rest = [i for i, s in enumerate(states) if s.get("momentum_buffer") is not None]
        for s in (states[i] for i in first):
            s["momentum_buffer"] = None
        for idx, is_first in ((first, True), (rest, False)):
            if not idx:
                continue
            if is_first:
                for i in idx:
                    states[i]["momentum_buffer"] = torch.empty_like(grads[i])
            torch._fused_sgd_([params[i] for i in idx], [grads[i] for i in idx],
                              [states[i]["momentum_buffer"] for i in idx], is_first_step=is_first, **hp)
