"""``descent.Shampoo``: per-dimension preconditioning with blocking, grafting and a diagonal fallback."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._validate import check_betas, check_nonneg, check_positive
from ..functional.shampoo import GRAFTING, shampoo, shampoo_blocks, shampoo_dims
from ._base import Optimizer, param_label, step_tensor
from ._spec import Declaration, Meta

__all__ = ["Shampoo"]


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 1)")


class Shampoo(Optimizer):
    r"""Shampoo with exponential statistics, blocking, grafting and momentum.

    For every block of a parameter with ``ndim >= 2`` and each of its :math:`k`
    dimensions of size > 1, a statistic :math:`L_i \leftarrow \beta_2 L_i + (1-\beta_2)
    G_{(i)}G_{(i)}^\top` and its inverse root :math:`(L_i+\epsilon I)^{-1/(2k)}`
    (recomputed every ``update_freq`` steps, in float64); the preconditioned gradient
    :math:`G\times_1 R_1\cdots\times_k R_k` takes the norm of the grafted direction
    (Adam's or SGD's, per block) and feeds a bias-corrected momentum:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) D_t,\qquad
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,m_t/(1-\beta_1^t)

    Parameters with ``ndim < 2`` take the diagonal (Adagrad/Adam-like) step
    :math:`g/(\sqrt{\hat v}+\epsilon_g)`. With ``grafting="adam"`` the step size behaves
    like Adam's, so Adam's lr is a good start. Dimensions above ``block_size`` are cut
    into blocks, so no preconditioner is larger than ``block_size``².

    Differences from the paper: statistics are an EMA (``beta2``; the paper sums, which
    ``beta2`` close to 1 approaches up to scale, and grafting removes the scale), the
    update is grafted and momentum is applied after preconditioning, as in Anil et al.
    (2020) and Shi et al. (2023). State (torch-style keys): ``step``, ``exp_avg``,
    ``exp_avg_sq`` (when needed), and ``preconditioner_k``/``inv_root_k`` for the k-th
    (block, dimension) pair in :func:`descent.functional.shampoo` order, flat so that
    state_dicts stay plain (in the parameter's dtype; the roots are computed in float64). Changing ``block_size`` mid-run
    is refused.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)`: momentum and statistics decay (default (0.9, 0.999)).
        eps: :math:`\epsilon` added to the statistics' eigenvalues (default 1e-12).
        weight_decay: decoupled :math:`\lambda` (default 0).
        update_freq: steps between inverse-root computations (default 10).
        block_size: largest preconditioned dimension (default 256).
        grafting: ``"adam"`` (default), ``"sgd"`` or ``None``.
        graft_eps: :math:`\epsilon_g` of the Adam direction (default 1e-8).
        maximize, backend, skip_nonfinite: see :class:`descent.SGD` (only the ``"loop"`` backend).

    References:
        Gupta, Koren & Singer (2018), "Shampoo: Preconditioned Stochastic Tensor Optimization";
        Anil et al. (2020), "Scalable Second Order Optimization for Deep Learning";
        Shi et al. (2023), "A Distributed Data-Parallel PyTorch Implementation of the
        Distributed Shampoo Optimizer" (reference code: facebookresearch/optimizers).

    Note:
        Not compile-friendly (``compile_friendly = False``): the preconditioner refresh reads the step number
        with ``.item()``, so ``torch.compile(opt.step)`` breaks the graph and recompiles as the step grows; run
        it uncompiled.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(8, 4)
        >>> opt = descent.Shampoo(model.parameters(), lr=1e-2, update_freq=5)
        >>> model(torch.randn(16, 8)).square().mean().backward(); _ = opt.step()
        >>> opt.state[model.weight]["preconditioner_0"].shape, opt.state[model.weight]["inv_root_1"].shape
        (torch.Size([4, 4]), torch.Size([8, 8]))
    """

    compile_friendly = False
    #: state keys (prefixes) of the preconditioners: whole matrices on one rank under FSDP2, never sharded
    preconditioner_keys = ("preconditioner_", "inv_root_")

    declaration = Declaration(
        functional=shampoo,
        hyper=lambda g: dict(lr=float(g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                             weight_decay=g["weight_decay"], update_freq=g["update_freq"],
                             block_size=g["block_size"], grafting=g["grafting"], graft_eps=g["graft_eps"],
                             maximize=g["maximize"]),
        columns=("exp_avg", "exp_avg_sq"),
        steps=True,
        meta=Meta("shampoo", adaptive=True, state_bytes=8.0, paper="Gupta, Koren & Singer (2018), "
                  "arXiv:1802.09568; Anil et al. (2020)", kind="matrix",
                  lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}),
    )

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        update_freq: int = 10,
        block_size: int = 256,
        grafting: str | None = "adam",
        graft_eps: float = 1e-8,
        *,
        maximize: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, update_freq=update_freq,
                        block_size=block_size, grafting=grafting, graft_eps=graft_eps, maximize=maximize,
                        backend=backend, skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        check_positive("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_nonneg("graft_eps", group["graft_eps"])
        _positive_int("update_freq", group["update_freq"])
        _positive_int("block_size", group["block_size"])
        if group["grafting"] not in GRAFTING:
            raise ValueError(f"Invalid grafting: {group['grafting']!r} (must be 'adam', 'sgd' or None)")
        gi = len(self.param_groups) - 1
        for i, p in enumerate(group["params"]):
            if p.is_complex():
                raise ValueError(f"Invalid parameter for Shampoo: {param_label(group, gi, i)} is complex")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
        state: dict[str, Any] = {"step": step_tensor(p), "exp_avg": zeros}
        pre: list[Tensor] = []
        if p.ndim >= 2 and p.numel() > 0:
            for block in shampoo_blocks(p, group["block_size"]):
                pre.extend(torch.zeros(block.shape[d], block.shape[d], dtype=p.dtype, device=p.device)
                           for d in shampoo_dims(block))
        for k, t in enumerate(pre):
            state[f"preconditioner_{k}"] = t
            state[f"inv_root_{k}"] = torch.eye(t.shape[0], dtype=p.dtype, device=p.device)
        if not pre or group["grafting"] == "adam":
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], overrides: Any = None) -> None:
        """Per tensor: Shampoo keeps a variable number of preconditioners per parameter."""
        hp = self.declaration.hyper(group)
        for p, g, s in zip(params, grads, states):
            if group["grafting"] == "adam" and "exp_avg_sq" not in s:  # grafting switched mid-run
                s["exp_avg_sq"] = torch.zeros_like(p)
            s["step"] += 1
            n = sum(1 for key in s if key.startswith("preconditioner_"))
            pre = [s[f"preconditioner_{k}"] for k in range(n)]
            roots = [s[f"inv_root_{k}"] for k in range(n)]
            shampoo(p, g, pre, roots, s["exp_avg"], s.get("exp_avg_sq"),
                    step=int(s["step"].item()), **hp)
