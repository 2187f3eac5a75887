"""``descent.MARS``: variance-reduced AdamW (Yuan et al., 2024), approximate form."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import kernels as K
from ._validate import check_betas, check_nonneg
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin
from ._spec import Declaration, Kernel, Meta, cautious_flag, zeros


class MARS(RoundingMixin, Optimizer):
    r"""MARS-AdamW: AdamW on a scaled, clipped, variance-reduced gradient.

    .. math::
        c_t = g_t + \gamma\tfrac{\beta_1}{1-\beta_1}(g_t - g_{t-1}),\quad
        \tilde c_t = c_t/\max(1,\|c_t\|),\quad
        \theta \leftarrow \theta - \eta\left(\frac{\hat m_t}{\sqrt{\hat v_t}+\epsilon} + \lambda\theta\right)

    with AdamW's moments of :math:`\tilde c_t` (:func:`descent.functional.mars`). This is
    MARS-approx, the variant the paper trains GPT-2 with: :math:`g_{t-1}` is the
    previous batch's gradient (no second gradient evaluation). Defaults as the
    authors' code (lr 3e-3, betas (0.95, 0.99), gamma 0.025). Difference: the authors'
    code runs plain AdamW (own lr/betas) on 1-D parameters unless ``optimize_1d``;
    descent applies MARS to every tensor given to it — put biases and norms in a group
    of :class:`descent.AdamW` for the authors' split. State: ``step``, ``exp_avg``,
    ``exp_avg_sq``, ``last_grad``.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 3e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.95, 0.99)).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: decoupled :math:`\lambda` (default 0).
        gamma: :math:`\gamma`, the variance-reduction weight (default 0.025).
        cautious: cautious masking of the momentum (default False).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Yuan, Liu, Wu, Zhou & Gu (2024), "MARS: Unleashing the Power of Variance
        Reduction for Training Large Models", Algorithm 2.

    Note:
        Not compile-friendly (``compile_friendly = False``): the step reads host scalars with ``.item()``, so
        ``torch.compile(opt.step)`` breaks the graph and recompiles every step; run it uncompiled.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.MARS(model.parameters(), lr=3e-3)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
    """

    compile_friendly = False

    declaration = Declaration(
        functional=F.mars,
        hyper=lambda g: dict(lr=float(g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                             gamma=float(g["gamma"]), weight_decay=g["weight_decay"], maximize=bool(g["maximize"]),
                             **cautious_flag(g)),
        columns=("exp_avg", "exp_avg_sq", "last_grad"),
        state={"exp_avg": zeros, "exp_avg_sq": zeros, "last_grad": zeros},
        steps=True,
        kernels={"fused": Kernel("descent.kernels.modern:mars", K.numba_cpu)},
        meta=Meta("mars", adaptive=True, state_bytes=12.0, paper="Yuan et al. (2024), arXiv:2411.10438",
                  lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gamma: float = 0.025,
        cautious: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma=gamma, cautious=cautious,
                        maximize=maximize, foreach=foreach, fused=fused, backend=backend,
                        skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_nonneg("gamma", group["gamma"])
