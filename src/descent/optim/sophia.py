"""``descent.SophiaG``: second-order clipped stochastic optimization (Liu et al., 2023).

The Hessian EMA is refreshed by the user's loop, every ``k`` steps (10 in the paper):

* classification / language models, Gauss-Newton-Bartlett (GNB): sample labels from
  the model's own logits with :func:`gnb_sample_labels`, back-propagate the loss on
  them, call :meth:`SophiaG.update_hessian`;
* any twice-differentiable loss: :meth:`SophiaG.update_hessian_hutchinson`.

Example (a runnable loop; the refresh is the ``if`` block)::

    >>> import torch, torch.nn.functional as Fn, descent
    >>> from descent.optim.sophia import gnb_sample_labels
    >>> _ = torch.manual_seed(0); X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    >>> model = torch.nn.Linear(5, 3)
    >>> opt = descent.SophiaG(model.parameters(), lr=1e-2, bs=64)
    >>> for step in range(30):
    ...     opt.zero_grad(); Fn.cross_entropy(model(X), y).backward(); _ = opt.step()
    ...     if step % 10 == 9:                      # refresh every k = 10 steps
    ...         opt.zero_grad()
    ...         logits = model(X)
    ...         Fn.cross_entropy(logits, gnb_sample_labels(logits)).backward()
    ...         opt.update_hessian()
    ...         opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .. import kernels as K
from ..kernels import triton as KT
from ._backend import floating
from ._validate import check_betas, check_nonneg, check_positive
from ._base import Optimizer
from ..lowbit.rounding import RoundingMixin
from ._spec import Declaration, Kernel, Meta, scalar, zeros

__all__ = ["SophiaG", "gnb_sample_labels"]


def gnb_sample_labels(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Labels :math:`\hat y \sim \mathrm{softmax}(\text{logits})`, one per row of the last dimension.

    The gradient of the cross-entropy on these labels, squared and scaled by the batch
    size in the step, is the Gauss-Newton-Bartlett estimate of the diagonal Hessian.

    Example:
        >>> import torch
        >>> gnb_sample_labels(torch.tensor([[0.0, 50.0], [50.0, 0.0]]))
        tensor([1, 0])
    """
    probs = torch.softmax(logits.detach().float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


class SophiaG(RoundingMixin, Optimizer):
    r"""Sophia with the Gauss-Newton-Bartlett Hessian estimator (see the module docstring).

    .. math::
        \theta \leftarrow \theta(1-\eta\lambda),\quad m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        \theta \leftarrow \theta - \eta\,\mathrm{sign}(m)\min\!\Big(\frac{|m|}{\rho\,b\,h+\epsilon}, 1\Big)

    and, on refresh, :math:`h \leftarrow \beta_2 h + (1-\beta_2)\hat h`. ``bs`` (:math:`b`)
    is the number of examples (tokens for a language model) the sampled loss averages
    over: the GNB estimate is :math:`b\,\hat g\odot\hat g`. Set ``bs=1`` with the
    Hutchinson estimator, whose estimate is already the Hessian diagonal. State:
    ``step``, ``exp_avg``, ``hessian`` (8 bytes per float32 parameter). Until the first
    refresh :math:`h=0` and the step is :math:`\eta\,\mathrm{sign}(m)`, as in the
    reference code. Defaults are the paper's (reference implementation
    ``Liuhong99/Sophia``, where ``bs`` is passed to ``step``; here it is a group
    hyperparameter, and ``step(bs=...)`` overrides it for one step).

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-4).
        betas: :math:`(\beta_1, \beta_2)` (default (0.965, 0.99)).
        rho: :math:`\rho` (default 0.04).
        weight_decay: decoupled :math:`\lambda` (default 0.1).
        bs: :math:`b` (default 5120, the reference's).
        eps: :math:`\epsilon` (default 1e-15).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.
        stochastic_rounding, kahan_summation: bfloat16 parameters are stepped in float32 and rounded back
            stochastically, or with a bfloat16 compensation state ``kahan_comp`` (:mod:`descent.lowbit.rounding`).
        capturable: step counters and tensor hyperparameters (``lr``, ``weight_decay``...) stay
            on the device and the step makes no host sync (the Triton kernel, on CUDA), so
            ``torch.cuda.graph`` can capture it (:mod:`descent.optim._run`).

    References:
        Liu, Li, Hall, Liang & Ma (2023), "Sophia: A Scalable Stochastic Second-order
        Optimizer for Language Model Pre-training", Algorithms 1-3.
    """

    declaration = Declaration(
        functional=F.sophia,
        hyper=lambda g: dict(lr=scalar(g, g["lr"]), beta1=g["betas"][0], rho=float(g["rho"]), bs=float(g["bs"]),
                             weight_decay=scalar(g, g["weight_decay"]), eps=float(g["eps"]), maximize=g["maximize"]),
        columns=("exp_avg", "hessian"),
        state={"exp_avg": zeros, "hessian": zeros},
        steps=True,
        step_arg=False,
        kernels={"fused": (Kernel("descent.kernels.launch:sophia", K.numba_cpu, steps=None),
                           Kernel("descent.kernels.triton:sophia", KT.supports, steps=None, capturable=True)),
                 "foreach": Kernel("descent.kernels.foreach:sophia", floating, steps=None)},
        meta=Meta("sophiag", adaptive=True, state_bytes=8.0, paper="Liu et al. (2023), arXiv:2305.14342",
                  lr={"classification": 3e-4, "language": 3e-4, "convex": 1e-3, "function": 1e-2}),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        *,
        bs: float = 5120,
        eps: float = 1e-15,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        stochastic_rounding: bool = False,
        kahan_summation: bool = False,
        capturable: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, bs=bs, eps=eps, maximize=maximize,
                        foreach=foreach, fused=fused, backend=backend, skip_nonfinite=skip_nonfinite,
                        stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                        capturable=capturable)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_nonneg("rho", group["rho"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_positive("bs", group["bs"])
        check_positive("eps", group["eps"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, bs: float | None = None) -> Any:
        """One step; ``bs`` overrides every group's ``bs`` for this step only."""
        if bs is not None:
            check_positive("bs", bs)
        return self._step(closure, {"bs": None if bs is None else float(bs)})

    def _hessian_states(self):
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p, self._state_of(p, group)

    @torch.no_grad()
    def update_hessian(self) -> None:
        r"""Fold :math:`\hat g\odot\hat g` of the current ``.grad`` into the ``hessian`` EMA (GNB).

        Call it right after a backward pass of the loss on labels drawn with
        :func:`gnb_sample_labels`; parameters without a gradient are left alone.
        """
        for group, p, st in self._hessian_states():
            if p.grad is not None:
                F.sophia_hessian_ema(st["hessian"], p.grad * p.grad, beta2=group["betas"][1])

    def update_hessian_hutchinson(self, closure: Callable[[], Tensor],
                                  generator: torch.Generator | None = None) -> Tensor:
        r"""Hutchinson refresh: :math:`\hat h = u\odot(\nabla^2 L)u`, :math:`u` Rademacher; returns the loss.

        ``closure`` computes the loss (with a graph; no ``backward`` inside). The
        estimate can be negative; the step treats a negative :math:`h` as 0 (sign
        step). Use ``bs=1`` with this estimator.
        """
        params = [p for _, p, _ in self._hessian_states() if p.requires_grad]
        with torch.enable_grad():
            loss = closure()
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            pairs = [(p, gr) for p, gr in zip(params, grads) if gr is not None]
            us = [torch.randint(0, 2, p.shape, generator=generator, dtype=p.dtype).mul_(2).sub_(1) for p, _ in pairs]
            hvps = torch.autograd.grad([gr for _, gr in pairs], [p for p, _ in pairs], grad_outputs=us)
        with torch.no_grad():
            for (p, _), u, hv in zip(pairs, us, hvps):
                group = next(gr for gr in self.param_groups if any(q is p for q in gr["params"]))
                F.sophia_hessian_ema(self._state_of(p, group)["hessian"], u * hv, beta2=group["betas"][1])
        return loss.detach()
