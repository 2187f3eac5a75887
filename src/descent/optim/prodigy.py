"""``descent.Prodigy``: learning-rate-free Adam (Mishchenko & Defazio, 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from .. import functional as F
from ._validate import check_betas, check_nonneg, check_positive, check_unit_interval
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin, _in_float32, _rounding
from ._spec import Declaration, Meta, zeros


class Prodigy(RoundingMixin, Optimizer):
    r"""Prodigy: Adam whose step size :math:`d` is estimated from the distance travelled.

    .. math::
        \hat d_k = \frac{\sum_i \lambda_i \langle g_i, x_0 - x_i\rangle}{\|s_k\|_1},\qquad
        d_{k+1} = \min\!\left(\max(d_k, \hat d_k),\ \rho\, d_k\right),\qquad
        \theta \leftarrow \theta - d_k\eta\,\frac{m}{\sqrt{v} + d_k\epsilon}

    with :math:`m, v` Adam's moments of :math:`d\,g` and :math:`s` an EMA of the weighted
    gradients (see :mod:`descent.functional.prodigy`). :math:`d` is one number shared by
    all param groups (stored in every group as ``d``, with ``d_max``, ``d_numerator``,
    ``k``), so ``state_dict`` holds it. Keep ``lr=1.0`` and use a schedule (cosine) on
    it; set it below 1 to damp the estimate.

    **d0.** :math:`d` starts at ``d0`` and can only grow. The published default
    ``d0=1e-6`` is kept: :math:`d` reaches a useful size within tens of steps on every
    built-in task (tested in ``tests/test_modern_optim.py``). The stall users report
    (prodigy #27) comes from an estimate that never exceeds ``d0``: that happens when
    ``d0`` is set *too large*, above the distance to a solution; keep ``d0`` tiny.
    **growth_rate** :math:`\rho` bounds how fast :math:`d` may grow per step
    (``inf``, i.e. no bound, by default as in the authors' code); 1.02 is the value the
    authors suggest when :math:`d` overshoots early (prodigy #37). As in the authors'
    code, the first move away from ``d0`` is not bounded (it jumps to :math:`\hat d`);
    every later step is.

    Differences from ``prodigyopt`` (1.1): param groups may have different ``lr``
    (each group's step is :math:`d\,\eta_{group}`; prodigyopt requires equal lrs);
    ``slice_p`` and ``fsdp_in_use`` are not offered; the state ``p0`` is a full copy.
    With equal lrs it matches prodigyopt in float64.

    Args:
        params: parameters or param group dicts.
        lr: the multiplier :math:`\eta` of :math:`d` (default 1.0).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        beta3: the EMA of :math:`s` and of the numerator (default :math:`\sqrt{\beta_2}`).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: :math:`\lambda` (default 0), decoupled unless ``decouple=False``.
        use_bias_correction: Adam's bias correction in the step (default False).
        safeguard_warmup: leave lr out of :math:`s` (helps with lr warm-up; default False).
        d0: initial :math:`d` (default 1e-6).
        d_coef: multiplier of the estimate :math:`\hat d` (default 1.0).
        growth_rate: :math:`\rho`, the bound on :math:`d_{k+1}/d_k` (default inf).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).

    References:
        Mishchenko & Defazio (2024), "Prodigy: An Expeditiously Adaptive Parameter-Free
        Learner", ICML 2024, Algorithm 4.

    Note:
        Not compile-friendly (``compile_friendly = False``): the shared distance estimate ``d`` is a host scalar
        updated every step (``.item()``), so ``torch.compile(opt.step)`` breaks the graph and recompiles every
        step; run it uncompiled.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = descent.Prodigy(model.parameters())
        >>> x = torch.randn(8, 4)
        >>> for _ in range(5):
        ...     opt.zero_grad(); model(x).pow(2).mean().backward(); _ = opt.step()
        >>> opt.param_groups[0]["d"] > 1e-6  # d grows from d0 once the weights have moved
        True
    """

    compile_friendly = False

    declaration = Declaration(  # the state and the metadata; step() is Prodigy's own (d is shared)
        functional=F.prodigy_apply,
        hyper=lambda g: dict(eps=g["eps"], beta1=g["betas"][0], weight_decay=g["weight_decay"],
                             decouple=bool(g["decouple"])),
        columns=("exp_avg", "exp_avg_sq"),
        state={"s": zeros, "p0": lambda p, g: p.detach().clone(), "exp_avg": zeros, "exp_avg_sq": zeros},
        optional={"exp_avg": lambda g: g["betas"][0] > 0},
        steps=True,
        meta=Meta("prodigy", adaptive=True, state_bytes=16.0, paper="Mishchenko & Defazio (2024), arXiv:2306.06101",
                  lr={"classification": 1.0, "language": 1.0, "convex": 1.0, "function": 1.0}),
    )

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0, *,
                 decouple: bool = True, use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = math.inf, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, backend: str | None = None,
                 skip_nonfinite: bool = False,
                 stochastic_rounding: bool = False, kahan_summation: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup, d0=d0,
                        d=d0, d_max=d0, d_numerator=0.0, d_coef=d_coef, growth_rate=growth_rate, k=0,
                        maximize=maximize, foreach=foreach, fused=fused, backend=backend,
                        skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        if group["beta3"] is not None:
            check_unit_interval("beta3", group["beta3"])
        check_positive("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_positive("d0", group["d0"])
        check_positive("d_coef", group["d_coef"])
        check_positive("growth_rate", group["growth_rate"])
        if group["growth_rate"] < 1:
            raise ValueError(f"Invalid growth_rate: {group['growth_rate']} (must be >= 1)")

    @staticmethod
    def _grads(group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        out = [-g if group["maximize"] else g for g in grads]
        if group["weight_decay"] != 0 and not group["decouple"]:
            out = [g.add(p, alpha=group["weight_decay"]) for p, g in zip(params, out)]
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step (see :meth:`descent.Optimizer.step`): all groups share one estimate of d."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        if self._skip_nonfinite(work):
            return loss
        first = self.param_groups[0]
        b1, b2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(b2)
        d, k = float(first["d"]), int(first["k"])
        bias = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if first["use_bias_correction"] else 1.0
        numerator, denominator = float(first["d_numerator"]) * beta3, 0.0
        prepared, sums, meshed = [], [0.0, 0.0], []  # this rank's terms of r and ||s||_1 (FSDP2: its shards)
        for gi, (group, params, grads, _) in enumerate(work):
            if any(p.is_complex() for p in params):
                raise ValueError(f"Invalid parameter for Prodigy: param_groups[{gi}] holds a complex tensor "
                                 "(pass torch.view_as_real(p) as the parameter)")
            gs = self._grads(group, params, grads)
            states = [self._state_of(p, group) for p in params]
            dlr = d * float(group["lr"]) * bias  # the step uses the d from before this update
            prepared.append((group, params, gs, states, dlr))
            if dlr == 0.0:
                continue
            meshed += [p for p in params if D.is_dtensor(p)]
            for p, g, s in zip(params, gs, states):
                delta, s_sum = F.prodigy_accumulate(
                    *(D.local(t) for t in (p, g, s["p0"], s["s"], s.get("exp_avg"), s["exp_avg_sq"])), d=d,
                    d0=float(group["d0"]), dlr=dlr, beta1=b1, beta2=b2, beta3=beta3,
                    safeguard_warmup=group["safeguard_warmup"])
                sums[0] += delta
                sums[1] += s_sum
        if meshed:  # sharded parameters: the two sums over every rank's shards, one all_reduce
            sums = [float(x) for x in D.sum_across([torch.tensor(sums, dtype=torch.float64, device=meshed[0].device)],
                                                    D.shard_group(meshed[0]))[0]]
        numerator += sums[0]
        denominator += sums[1]
        if denominator == 0:
            return loss
        d_max = float(first["d_max"])
        d, d_max, d_hat = F.prodigy_d(d, d_max, numerator, denominator, d0=float(first["d0"]),
                                      d_coef=float(first["d_coef"]), growth_rate=float(first["growth_rate"]))
        for group in self.param_groups:
            group.update(d=d, d_max=d_max, d_hat=d_hat, d_numerator=numerator, d_denom=denominator, k=k + 1)
        for group, params, gs, states, dlr in prepared:
            for p, g, s in zip(params, gs, states):
                s["step"] += 1
                self._apply(group, p, g, s, d=d, dlr=dlr, eps=group["eps"], beta1=b1,
                            weight_decay=group["weight_decay"], decouple=group["decouple"])
        return loss

    @staticmethod
    def _apply(group: dict[str, Any], p: Tensor, g: Tensor, s: dict[str, Any], **hp: Any) -> None:
        """:func:`descent.functional.prodigy_apply` on one tensor (its local shard); a bf16 parameter with
        ``stochastic_rounding`` or ``kahan_summation`` is stepped in float32 and rounded as the option says."""
        view = {k: D.local(v) for k, v in s.items()}
        lp, lg = D.local(p), D.local(g)
        rounding = _rounding(group, lp)
        if rounding == "nearest":
            F.prodigy_apply(lp, lg, view.get("exp_avg"), view["exp_avg_sq"], **hp)
            return
        _in_float32(lambda ps, gs, ss: F.prodigy_apply(ps[0], gs[0], ss[0].get("exp_avg"), ss[0]["exp_avg_sq"], **hp),
                    [lp], [lg], [view], rounding)
        for k, v in view.items():
            if k not in s:  # the Kahan compensation, made on the first step
                s[k] = D.like_param(v, p)
