"""``descent.SOAP``: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ._validate import check_betas, check_nonneg, check_unit_interval
from ._base import Optimizer, run_declaration
from ._run import _advanced_ints
from ._spec import Declaration, Meta, zeros


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 1)")


class SOAP(Optimizer):
    r"""SOAP: Shampoo's eigenbases :math:`Q_L, Q_R` as a rotation, Adam inside it.

    .. math::
        G' = Q_L^\top G Q_R,\quad V \leftarrow \beta_2 V + (1-\beta_2) G'^{\odot 2},\quad
        \theta \leftarrow \theta - \eta_t\, Q_L \frac{Q_L^\top M Q_R}{\sqrt V + \epsilon} Q_R^\top
            - \eta\lambda\theta

    (:func:`descent.functional.soap`). The bases are refreshed every
    ``precondition_frequency`` steps by one power iteration and QR, not recomputed,
    which is what makes SOAP cheaper and more stable than Shampoo. As the authors' code,
    a tensor with ``ndim > 2`` (a conv kernel) gets one basis per dimension,
    :math:`G' = G \times_1 Q_1^\top \cdots \times_k Q_k^\top`
    (:func:`descent.functional.soap_nd`), and with ``merge_dims=True`` consecutive
    dimensions are first merged while their product stays <= ``max_precond_dim``
    (:func:`descent.functional.soap_shape`; a (64, 32, 3, 3) kernel becomes (6144, 3)).
    A dimension longer than ``max_precond_dim`` gets no rotation (the identity); 1-D
    tensors run Adam (from their first step; a rotated tensor's first step only collects
    statistics, as in the authors' code, which also skips the first step of 1-D tensors),
    or with ``precondition_1d=True`` are rotated by one basis. Defaults as the authors'
    code: lr 3e-3, betas (0.95, 0.95), weight decay 0.01, frequency 10, ``shampoo_beta`` =
    beta2, no merging, no 1-D rotation. State per tensor: ``exp_avg``, ``exp_avg_sq``
    (shaped like the parameter) and plain square tensors per basis: ``gg_left``/``gg_right``
    and ``q_left``/``q_right`` for a matrix (:math:`2mn + 2m^2 + 2n^2` numbers), ``gg_k``/``q_k``
    for dimension ``k`` of a tensor preconditioned per dimension (``ndim > 2``, a matrix that
    ``merge_dims`` reshapes, a vector with ``precondition_1d``). A state of another layout
    (a checkpoint of an earlier descent, which preconditioned ``ndim > 2`` tensors as their
    ``(shape[0], prod(rest))`` matrix, or other ``max_precond_dim``/``merge_dims``/
    ``precondition_1d``) raises a ``ValueError`` naming it in ``load_state_dict`` and ``step``.

    Args:
        params: parameters or param group dicts.
        lr: :math:`\eta` (default 3e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.95, 0.95)).
        shampoo_beta: EMA of the statistics :math:`L, R` (default None: :math:`\beta_2`).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: decoupled :math:`\lambda` (default 0.01).
        precondition_frequency: refresh the bases every this many steps (default 10).
        max_precond_dim: dimensions longer than this get no rotation (default 10000).
        merge_dims: merge consecutive small dimensions before preconditioning (default False).
        precondition_1d: rotate 1-D tensors too (default False: Adam).
        correct_bias: Adam's bias correction (default True).
        cautious: cautious masking of the direction (Liang et al., 2024; default False).
        maximize, backend, skip_nonfinite: see :class:`descent.Lion`.

    References:
        Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade (2024),
        "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        >>> opt = descent.SOAP(model.parameters(), lr=3e-3)
        >>> for _ in range(2):
        ...     model(torch.randn(4, 3, 3, 3)).pow(2).mean().backward(); _ = opt.step()
        >>> [tuple(opt.state[model[0].weight][f"q_{k}"].shape) for k in range(4)]
        [(8, 8), (3, 3), (3, 3), (3, 3)]
        >>> opt = descent.SOAP(model.parameters(), merge_dims=True, max_precond_dim=16)
        >>> model(torch.randn(4, 3, 3, 3)).pow(2).mean().backward(); _ = opt.step()
        >>> sorted(k for k in opt.state[model[0].weight] if k.startswith("q_"))  # merged (8, 9, 3): 3 bases
        ['q_0', 'q_1', 'q_2']
    """

    #: state keys (prefixes) of the preconditioners: whole matrices on one rank under FSDP2, never sharded
    preconditioner_keys = ("gg_", "q_")

    declaration = Declaration(
        functional=F.soap,
        hyper=lambda g: dict(lr=float(g["lr"]), beta1=g["betas"][0], beta2=g["betas"][1],
                             shampoo_beta=g["betas"][1] if g["shampoo_beta"] is None else g["shampoo_beta"],
                             eps=g["eps"], weight_decay=g["weight_decay"],
                             precondition_frequency=int(g["precondition_frequency"]),
                             correct_bias=bool(g["correct_bias"]), cautious=bool(g["cautious"]),
                             maximize=bool(g["maximize"])),
        columns=("exp_avg", "exp_avg_sq", "gg_left", "gg_right", "q_left", "q_right"),
        state={"exp_avg": zeros, "exp_avg_sq": zeros},
        steps=True,
        meta=Meta("soap", adaptive=True, state_bytes=8.0, paper="Vyas et al. (2024), arXiv:2409.11321",
                  lr={"classification": 3e-3, "language": 3e-3, "convex": 0.01, "function": 0.05}, kind="matrix"),
    )

    def __init__(self, params: Any, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float | None = None, eps: float = 1e-8, weight_decay: float = 0.01, *,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000, merge_dims: bool = False,
                 precondition_1d: bool = False, correct_bias: bool = True,
                 cautious: bool = False, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, backend: str | None = None, skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
                        precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
                        merge_dims=merge_dims, precondition_1d=precondition_1d,
                        correct_bias=correct_bias, cautious=cautious, maximize=maximize, foreach=foreach,
                        fused=fused, backend=backend, skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_betas(group["betas"])
        if group["shampoo_beta"] is not None:
            check_unit_interval("shampoo_beta", group["shampoo_beta"])
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        _positive_int("precondition_frequency", group["precondition_frequency"])
        _positive_int("max_precond_dim", group["max_precond_dim"])
        for key in ("merge_dims", "precondition_1d"):
            if not isinstance(group.get(key, False), bool):
                raise ValueError(f"Invalid {key}: {group[key]!r} (must be a bool)")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if p.is_complex():
            raise ValueError(f"Invalid parameter for SOAP: a complex tensor of shape {tuple(p.shape)} "
                             "(SOAP's eigenbases are real; pass torch.view_as_real(p) as the parameter)")
        state = self.declaration.init_state(p, group)
        # V is updated through its matrix (or per-dimension) view, which must be a view: keep it contiguous
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        dtype = torch.promote_types(p.dtype, torch.float32)  # eigh/QR need float32 at least
        shape = _per_dim_shape(p, group)
        if shape is not None:
            sides = [(str(d), n) for d, n in enumerate(shape)]
        elif p.ndim == 2 and p.numel():
            sides = list(zip(("left", "right"), p.shape))
        else:
            sides = []
        for side, n in sides:
            if n <= group["max_precond_dim"]:
                state[f"gg_{side}"] = torch.zeros(n, n, dtype=dtype, device=p.device)
                state[f"q_{side}"] = torch.zeros(n, n, dtype=dtype, device=p.device)
        return state

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], overrides: Mapping[str, Any] | None = None) -> None:
        """Matrices, vectors and empty tensors on the declaration; per-dimension tensors one by one."""
        # the layout check is eager only (under torch.compile it would add graphs; load_state_dict checks too)
        compiling = torch.compiler.is_compiling()
        shapes = [_per_dim_shape(p, group) if compiling else _checked_layout(p, s, group)
                  for p, s in zip(params, states)]
        rest = [i for i, shape in enumerate(shapes) if shape is None]
        if len(rest) == len(params):
            return run_declaration(self.declaration, backend, group, params, grads, states, overrides)
        if rest:
            run_declaration(self.declaration, backend, group, [params[i] for i in rest], [grads[i] for i in rest],
                            [states[i] for i in rest], overrides)
        per_dim = [i for i, shape in enumerate(shapes) if shape is not None]
        hp = self.declaration.hyper(group)
        if overrides:
            hp.update((k, v) for k, v in overrides.items() if v is not None)
        for i, step in zip(per_dim, _advanced_ints(states, per_dim)):
            s, shape = states[i], shapes[i]
            gg, q = ([s.get(f"{x}_{d}") for d in range(len(shape))] for x in ("gg", "q"))
            F.soap_nd(params[i], grads[i], s["exp_avg"], s["exp_avg_sq"], gg, q, shape=shape, step=step, **hp)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, then a check that every loaded state has this SOAP's layout (see :func:`_checked_layout`)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                if self.state.get(p):
                    _checked_layout(p, self.state[p], group, loading=True)


def _per_dim_shape(p: Tensor, group: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The shape ``p`` is preconditioned as when it has one basis per dimension (keys ``gg_k``/``q_k``);
    None for the matrix layout (``gg_left``/``gg_right``): matrices whose shape ``merge_dims`` keeps,
    vectors without ``precondition_1d``, scalars and empty tensors."""
    if not p.numel() or p.ndim == 0:
        return None
    if p.ndim == 1:
        return tuple(p.shape) if group.get("precondition_1d") and p.shape[0] <= group["max_precond_dim"] else None
    shape = F.soap_shape(p.shape, group["max_precond_dim"], bool(group.get("merge_dims")))
    return None if p.ndim == 2 and shape == tuple(p.shape) else shape


_MATRIX_KEYS = ("gg_left", "gg_right", "q_left", "q_right")


def _checked_layout(p: Tensor, s: Mapping[str, Any], group: Mapping[str, Any],
                    loading: bool = False) -> tuple[int, ...] | None:
    """:func:`_per_dim_shape`, after checking that the state ``s`` holds the bases of that layout.

    ``loading``: a state without any basis passes (the ranks that do not own a sharded matrix under
    FSDP2 hold none).

    Raises:
        ValueError: the state has the other layout or other sizes (a checkpoint of a descent release that
            preconditioned tensors with more than 2 dimensions as their ``(shape[0], prod(rest))`` matrix, or
            ``max_precond_dim``/``merge_dims``/``precondition_1d`` changed since the state was made).
    """
    shape = _per_dim_shape(p, group)
    found = {k: tuple(v.shape) for k, v in sorted(s.items()) if k[:3] == "gg_" or k[:2] == "q_"}
    if shape is None:
        want = {k: found[k] for k in _MATRIX_KEYS if k in found} if p.ndim == 2 else {}
    else:
        want = {f"{x}_{d}": (n, n) for x in ("gg", "q") for d, n in enumerate(shape) if n <= group["max_precond_dim"]}
    if found == want or (loading and not found):
        return shape
    old = p.ndim > 2 and any(k in s for k in _MATRIX_KEYS)
    raise ValueError(
        f"Invalid SOAP state for a parameter of shape {tuple(p.shape)}: it holds the bases {found}, but "
        + (f"SOAP now preconditions each of the dimensions {shape} (bases {want}); this state is the "
           "(shape[0], prod(rest)) matrix layout of an earlier descent SOAP, which cannot be converted: drop "
           "this parameter's entry from the state_dict to restart its statistics"
           if old else
           f"this group's max_precond_dim={group['max_precond_dim']}, merge_dims={bool(group.get('merge_dims'))}, "
           f"precondition_1d={bool(group.get('precondition_1d'))} give {want}; these options cannot change "
           "once the state exists"))
