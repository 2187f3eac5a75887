"""``descent.AdEMAMix``: Adam plus a slow EMA of the gradients (Pagliardini et al., 2024)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import kernels as K
from ._validate import check_nonneg, check_positive, check_unit_interval
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin
from ._spec import Declaration, Kernel, Meta, cautious_flag, zeros


class AdEMAMix(RoundingMixin, Optimizer):
    r"""AdEMAMix: a mixture of a fast (:math:`\beta_1`) and a slow (:math:`\beta_3`) momentum.

    .. math::
        \theta \leftarrow \theta - \eta\left(\frac{\hat m_1 + \alpha_t m_2}{\sqrt{\hat\nu}+\epsilon}
            + \lambda\theta\right)

    with Adam's :math:`\hat m_1, \hat\nu` and the slow momentum
    :math:`m_2 \leftarrow \beta_{3,t} m_2 + (1-\beta_{3,t}) g`. With ``t_alpha_beta3=T``
    the paper's schedulers warm :math:`\alpha_t` up linearly and :math:`\beta_{3,t}` from
    :math:`\beta_1` to :math:`\beta_3` over the first T steps
    (:func:`descent.functional.ademamix_schedule`); the paper uses T equal to the run's
    length for large :math:`\beta_3` and warns that without it early training can
    diverge. Defaults as the authors' code: betas (0.9, 0.999, 0.9999), alpha 2.0.
    State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``exp_avg_slow`` (12 bytes per float32
    parameter, 1.5x AdamW).

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2, \beta_3)` (default (0.9, 0.999, 0.9999)).
        alpha: :math:`\alpha` (default 2.0).
        t_alpha_beta3: warm-up length T of :math:`\alpha` and :math:`\beta_3`, or None.
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: decoupled :math:`\lambda` (default 0).
        cautious: cautious masking of the fast momentum (default False).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Pagliardini, Ablin & Grangier (2024), "The AdEMAMix Optimizer: Better, Faster,
        Older", Algorithm 1.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.AdEMAMix(model.parameters(), lr=1e-3, t_alpha_beta3=1000)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
    """

    declaration = Declaration(
        functional=F.ademamix,
        hyper=lambda g: dict(lr=float(g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], beta3=g["betas"][2],
                             alpha=float(g["alpha"]), eps=g["eps"], weight_decay=g["weight_decay"],
                             warmup=g["t_alpha_beta3"], maximize=bool(g["maximize"]), **cautious_flag(g)),
        columns=("exp_avg", "exp_avg_sq", "exp_avg_slow"),
        state={"exp_avg": zeros, "exp_avg_sq": zeros, "exp_avg_slow": zeros},
        steps=True,
        kernels={"fused": Kernel("descent.kernels.modern:ademamix", K.numba_cpu)},
        meta=Meta("ademamix", adaptive=True, state_bytes=12.0, paper="Pagliardini et al. (2024), arXiv:2409.03137",
                  lr={"classification": 1e-3, "language": 1e-3, "convex": 0.01, "function": 0.05}),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        t_alpha_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        cautious: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, alpha=alpha, t_alpha_beta3=t_alpha_beta3, eps=eps,
                        weight_decay=weight_decay, cautious=cautious, maximize=maximize, foreach=foreach,
                        fused=fused, backend=backend, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 3:
            raise ValueError(f"Invalid betas: {betas!r} (must be a triple (beta1, beta2, beta3))")
        for name, b in zip(("beta1", "beta2", "beta3"), betas):
            check_unit_interval(name, b)
        check_nonneg("alpha", group["alpha"])
        if group["t_alpha_beta3"] is not None:
            check_positive("t_alpha_beta3", group["t_alpha_beta3"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
