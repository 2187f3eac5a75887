"""``descent.ADOPT``: Adam with a one-step-late second moment (Taniguchi et al., 2024)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import kernels as K
from ._validate import check_betas, check_nonneg, check_positive
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin
from ._spec import Declaration, Kernel, Meta, cautious_flag, zeros


class ADOPT(RoundingMixin, Optimizer):
    r"""ADOPT: normalize the gradient by the *previous* second moment, then take momentum.

    .. math::
        \hat g_t = \mathrm{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}},\epsilon)}, \pm t^{1/4}\right),\quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat g_t,\quad
        \theta_t = \theta_{t-1} - \eta\, m_t

    The first step only sets :math:`v_1 = g_1^2` (see :func:`descent.functional.adopt`).
    Same defaults as the authors' code (lr 1e-3, betas (0.9, 0.9999), eps 1e-6, clip
    :math:`t^{1/4}`, coupled weight decay). State: ``step``, ``exp_avg``, ``exp_avg_sq``.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.9999)).
        eps: :math:`\epsilon` (default 1e-6).
        weight_decay: :math:`\lambda` (default 0).
        decouple: decoupled (AdamW-style) decay instead of coupled (default False).
        clip_exponent: the clip :math:`t^{c}`, or None for none (default 0.25).
        cautious: cautious masking of the momentum (Liang et al., 2024; default False).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Taniguchi et al. (2024), "ADOPT: Modified Adam Can Converge with Any beta2 with
        the Optimal Rate", NeurIPS 2024.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.ADOPT(model.parameters(), lr=1e-3)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
    """

    declaration = Declaration(
        functional=F.adopt,
        hyper=lambda g: dict(lr=float(g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                             weight_decay=g["weight_decay"], decouple=bool(g["decouple"]),
                             clip_exponent=g["clip_exponent"], maximize=bool(g["maximize"]), **cautious_flag(g)),
        columns=("exp_avg", "exp_avg_sq"),
        state={"exp_avg": zeros, "exp_avg_sq": zeros},
        steps=True,
        kernels={"fused": Kernel("descent.kernels.modern:adopt", K.numba_cpu)},
        meta=Meta("adopt", adaptive=True, state_bytes=8.0, paper="Taniguchi et al. (2024), arXiv:2411.02853",
                  lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        decouple: bool = False,
        clip_exponent: float | None = 0.25,
        cautious: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        clip_exponent=clip_exponent, cautious=cautious, maximize=maximize, foreach=foreach,
                        fused=fused, backend=backend, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        if group["clip_exponent"] is not None:
            check_positive("clip_exponent", group["clip_exponent"])
