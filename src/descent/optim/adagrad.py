"""``descent.Adagrad``: a drop-in for ``torch.optim.Adagrad``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ._validate import check_nonneg
from ._backend import floating, torch_fused
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin
from ._spec import Declaration, Kernel, Meta


def _initial_sum(p: Tensor, group: dict[str, Any]) -> Tensor:
    """:math:`G_0`; a complex parameter's starts at ``v + vj``, as torch's (each real view component is ``v``)."""
    v = group["initial_accumulator_value"]
    return torch.full_like(p, complex(v, v) if p.is_complex() else v, memory_format=torch.preserve_format)


class Adagrad(RoundingMixin, Optimizer):
    r"""Adagrad: per-coordinate steps scaled by the root of the summed squared gradients.

    .. math::
        G_t = G_{t-1} + g_t^2,\qquad
        \theta_{t+1} = \theta_t - \frac{\eta}{1 + (t-1)\delta}\,\frac{g_t}{\sqrt{G_t} + \epsilon}

    Arguments, defaults and state keys (``step``, ``sum``) are torch's; the state is
    created lazily on the first step rather than in the constructor, which loads and
    saves the same. Default CPU path: torch's fused kernel.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-2).
        lr_decay: :math:`\delta` (default 0).
        weight_decay: coupled L2 (default 0).
        initial_accumulator_value: :math:`G_0` (default 0).
        eps: :math:`\epsilon` (default 1e-10).
        foreach, maximize, fused, backend, skip_nonfinite: see :class:`descent.SGD`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online
        Learning and Stochastic Optimization".

    Example:
        >>> import torch, descent
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = descent.Adagrad([w], lr=0.5)
        >>> w.sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([0.5000, 0.5000])
    """

    declaration = Declaration(
        functional=F.adagrad,
        hyper=lambda g: dict(lr=float(g["lr"]), lr_decay=g["lr_decay"], weight_decay=g["weight_decay"],
                             eps=g["eps"], maximize=g["maximize"]),
        columns=("sum",),
        state={"sum": _initial_sum},
        steps=True,
        kernels={"fused": Kernel("descent.kernels.launch:adagrad_fused", torch_fused, steps="tensor", amp=True),
                 "foreach": Kernel("descent.kernels.launch:adagrad_foreach", floating, steps="tensor")},
        meta=Meta("adagrad", adaptive=True, state_bytes=4.0, paper="Duchi, Hazan & Singer (2011)",
                  lr={"classification": 0.05, "language": 0.05, "convex": 0.1, "function": 0.5}),
    )

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, differentiable=differentiable,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, fused=fused, backend=backend, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _sparse_ok(self, group: dict[str, Any]) -> bool:
        return True  # sparse gradients (nn.Embedding(sparse=True)) run the loop, as in torch

    def _check_group(self, group: dict[str, Any]) -> None:
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            check_nonneg(name, group[name])
