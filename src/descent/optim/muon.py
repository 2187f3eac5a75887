"""``descent.Muon``: orthogonalized momentum for matrices, with an auxiliary AdamW for the rest."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._validate import check_betas, check_nonneg, check_unit_interval
from ..functional.muon import NS_COEFFICIENTS, NS_METHODS, muon, muon_batched
from ._backend import floating, torch_fused
from ._base import Optimizer, param_label, run_declaration
from ._spec import Declaration, Kernel, Meta, zeros
from .adam import AdamW

__all__ = ["Muon"]

_EMBED_HINTS = ("embed", "wte", "wpe", "tok_emb", "pos_emb")
_HEAD_HINTS = ("head", "classifier")
_ADJUST = (None, "original", "match_rms_adamw")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns)


def _route_module(model: nn.Module, head_names: Sequence[str] | None) -> tuple[list, list]:
    """(muon, aux) lists of (name, param) for a module."""
    entries: list[tuple[str, Tensor, nn.Module]] = []
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                entries.append((f"{mname}.{pname}" if mname else pname, p, module))
    if head_names is None:
        head_names = list(_HEAD_HINTS)
        if not any(_matches(n, head_names) for n, _, _ in entries):
            linears = [m for _, _, m in entries if isinstance(m, nn.Linear)]
            last = linears[-1] if linears else None
            head_names = [n for n, _, m in entries if m is last]
    muon, aux = [], []
    for name, p, module in entries:
        to_aux = (p.ndim < 2 or isinstance(module, (nn.Embedding, nn.EmbeddingBag))
                  or _matches(name, head_names))
        (aux if to_aux else muon).append((name, p))
    return muon, aux


def _route_named(named: list[tuple[str, Tensor]], head_names: Sequence[str] | None) -> tuple[list, list]:
    patterns = list(_HEAD_HINTS if head_names is None else head_names) + list(_EMBED_HINTS)
    muon, aux = [], []
    for name, p in named:
        (aux if p.ndim < 2 or _matches(name, patterns) else muon).append((name, p))
    return muon, aux


def _groups(params: Any, head_names: Sequence[str] | None, aux_hp: dict[str, Any]) -> list[dict[str, Any]]:
    """Route ``params`` (module, named params, tensors or group dicts) into Muon/AdamW groups."""
    if isinstance(params, nn.Module):
        muon, aux = _route_module(params, head_names)
    else:
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {torch.typename(params)}")
        items = list(params)
        named = [isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items]
        if any(named) and not all(named):
            raise ValueError("all optimizer params should be with/without names. Some param names are missing")
        if items and all(isinstance(x, dict) for x in items):
            return [dict(g) for g in items]  # explicit groups: "use_muon" decides; without it, per parameter
        if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
            muon, aux = _route_named(items, head_names)
        elif all(isinstance(x, Tensor) for x in items):
            muon = [(None, p) for p in items if p.ndim >= 2]
            aux = [(None, p) for p in items if p.ndim < 2]
        else:
            raise ValueError("Invalid params: expected a module, named parameters, tensors or param group dicts")
    if aux and not muon:
        warnings.warn(f"Muon: none of the {len(aux)} parameters is a hidden matrix (all are 1-D, embeddings or "
                      "the output head), so every one goes to the auxiliary AdamW (adamw_lr="
                      f"{aux_hp['lr']:g}) and Muon's lr is unused; use descent.AdamW, or pass head_names=[] "
                      "to orthogonalize the head too", UserWarning, stacklevel=3)
    groups = []
    for members, extra in ((muon, {"use_muon": True}), (aux, {"use_muon": False, **aux_hp})):
        if members:
            group = {"params": [p for _, p in members], **extra}
            if members[0][0] is not None:
                group["param_names"] = [n for n, _ in members]
            groups.append(group)
    return groups


def _muon_tensor(param: Tensor, grad: Tensor, momentum_buffer: Tensor, **hp: Any) -> None:
    """:func:`descent.functional.muon` on one matrix (nothing to do for a zero-size one)."""
    if param.numel():
        muon(param, grad, momentum_buffer, **hp)


class Muon(Optimizer):
    r"""Muon for hidden matrices and conv kernels; AdamW for embeddings, the head and vectors.

    Matrix groups (``group["use_muon"] = True``):

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) g_t,\quad U_t = (1-\mu) g_t + \mu B_t,\quad
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\, s(A, B)\, \mathrm{NS}_5(U_t)

    with :func:`descent.functional.newton_schulz` (quintic, coefficients (3.4445, −4.7750,
    2.0315)) and the shape factor :math:`s` of ``adjust_lr_fn``. Conv kernels are
    flattened to ``(out, in·kh·kw)``. Small matrices of one shape are orthogonalized as
    one batch (backends ``"fused"``/``"foreach"``, the CPU default; large ones, where
    batching stops paying on CPU, one at a time: see
    :data:`descent.functional.muon.BATCH_LIMIT`); ``"loop"`` does all one at a time.
    Auxiliary groups (``use_muon=False``) run :class:`descent.AdamW`'s step (torch's fused
    kernel on CPU) with ``adamw_*`` hyperparameters.

    Routing when ``params`` is not a list of group dicts: a module sends embeddings
    (``nn.Embedding``), the output head (names containing ``head``/``classifier``, else
    the last ``nn.Linear``; or ``head_names``) and every parameter with ``ndim < 2`` to
    AdamW and the other matrices/kernels to Muon; ``named_parameters()`` routes by name
    (``embed``, ``wte``, ``wpe``, ``head``, ...) and ndim; plain tensors by ndim only.
    Group dicts (as HF's ``optimizer_cls_and_kwargs``, timm or ``ZeroRedundancyOptimizer``
    build them) are routed per parameter unless they say otherwise: without a
    ``use_muon`` key (``"auto"``) matrices go to Muon and the rest to the auxiliary AdamW
    with the ``adamw_*`` hyperparameters; ``use_muon=True`` makes a whole group Muon (a
    parameter Muon cannot take raises ``ValueError`` naming it) and ``use_muon=False`` a
    whole group AdamW, as in KellerJordan's ``MuonWithAuxAdam``.

    Same defaults as ``torch.optim.Muon`` (``lr=1e-3, weight_decay=0.1, momentum=0.95,
    nesterov=True, eps=1e-7, ns_steps=5``) and the same numbers on 2-D parameters: bit
    for bit with ``backend="loop"``; the batched default agrees to bf16 rounding (a batched
    bf16 matmul rounds differently from torch's one-at-a-time one now and then). Differences: ``ns_dtype=None``
    iterates float64 parameters in float64 and uses float32 on CPUs without native bf16
    (torch always uses bf16); no ``torch.distributed`` is needed; state key
    ``momentum_buffer`` as torch. State: 4 bytes per Muon parameter (fp32), 8 per AdamW one.

    Args:
        params: a module, ``named_parameters()``, tensors, or group dicts.
        lr: Muon learning rate :math:`\eta`. weight_decay: decoupled :math:`\lambda`.
        momentum: :math:`\mu`. nesterov: use :math:`U_t` (else :math:`B_t`).
        ns_coefficients, eps, ns_steps: of the Newton–Schulz iteration.
        adjust_lr_fn: ``None``/``"original"`` (:math:`\sqrt{\max(1, A/B)}`) or ``"match_rms_adamw"``
            (:math:`0.2\sqrt{\max(A,B)}`).
        ns_dtype: dtype of the iteration; ``None`` chooses per device (see above).
        ns_method: ``"standard"`` (default, torch's numbers), ``"gram"`` or ``"auto"``:
            :func:`descent.functional.gram_newton_schulz` evaluates the same polynomial on
            the small Gram matrix, 1.3-1.4x faster on matrices with aspect ratio 3-4 (bf16,
            CPU); ``"auto"`` uses it where the aspect ratio is at least 2. In bf16 it
            rounds differently from the standard form (errors of the same order).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the auxiliary AdamW's (defaults as
            Keller Jordan's ``MuonWithAuxAdam``: 3e-4, (0.9, 0.95), 1e-8 (his 1e-10), 0).
        head_names: name patterns of the output head (sent to AdamW); replaces the automatic rule.
        maximize, foreach, fused, backend, skip_nonfinite: see :class:`descent.SGD`.

    References:
        Jordan et al. (2024), "Muon: An optimizer for hidden layers in neural networks",
        https://kellerjordan.github.io/posts/muon/ (reference code: github.com/KellerJordan/Muon);
        Liu et al. (2025), "Muon is Scalable for LLM Training".

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> opt = descent.Muon(model, lr=0.02, adamw_lr=3e-3)
        >>> [(g["use_muon"], g["param_names"]) for g in opt.param_groups]
        [(True, ['0.weight']), (False, ['0.bias', '2.weight', '2.bias'])]
        >>> model(torch.randn(4, 8)).square().mean().backward(); _ = opt.step()
    """

    declaration = Declaration(
        functional=_muon_tensor,
        hyper=lambda g: dict(lr=float(g["lr"]), weight_decay=g["weight_decay"], momentum=g["momentum"],
                             nesterov=g["nesterov"], ns_coefficients=g["ns_coefficients"], ns_steps=g["ns_steps"],
                             eps=g["eps"], adjust_lr_fn=g["adjust_lr_fn"], ns_dtype=g["ns_dtype"],
                             ns_method=g.get("ns_method", "standard"), maximize=g["maximize"]),
        columns=("momentum_buffer",),
        state={"momentum_buffer": zeros},
        kernels={"foreach": Kernel("descent.kernels.launch:muon", floating, steps=None, dense_only=False),
                 "fused": Kernel("descent.kernels.launch:muon", torch_fused, steps=None, dense_only=False)},
        meta=Meta("muon", adaptive=True, state_bytes=5.5, paper="Jordan et al. (2024); Liu et al. (2025), "
                  "arXiv:2502.16982", lr={"classification": 0.02, "language": 0.02, "convex": 0.02, "function": 0.02},
                  kind="matrix", takes_model=True),
    )

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: torch.dtype | None = None,
        ns_method: str = "standard",
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        head_names: Sequence[str] | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        aux_hp = dict(lr=adamw_lr, eps=adamw_eps, weight_decay=adamw_weight_decay)
        for name, value in aux_hp.items():
            check_nonneg(f"adamw_{name}", value)
        check_betas(adamw_betas, ("adamw_beta1", "adamw_beta2"))
        groups = _groups(params, head_names, aux_hp)
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, ns_method=ns_method, use_muon="auto",
                        adamw_lr=adamw_lr, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                        adamw_betas=tuple(adamw_betas), amsgrad=False, decoupled_weight_decay=True,
                        maximize=maximize, foreach=foreach, fused=fused, backend=backend,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(groups, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a ``use_muon=False`` group takes the ``adamw_*`` values it does not set."""
        if not param_group.get("use_muon", True):
            # "betas" lives only in AdamW groups, as torch.optim.Muon's defaults have none: OneCycleLR
            # (cycle_momentum) then cycles the Muon groups' "momentum" as it does torch's.
            for key in ("lr", "eps", "weight_decay", "betas"):
                param_group.setdefault(key, self.defaults[f"adamw_{key}"])
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonneg("lr", group["lr"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_nonneg("eps", group["eps"])
        if not group["use_muon"]:
            check_betas(group["betas"])
            return
        check_unit_interval("momentum", group["momentum"])
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
            raise ValueError(f"Invalid ns_steps: {steps!r} (must be an int in [1, 100))")
        if len(group["ns_coefficients"]) != 3:
            raise ValueError(f"Invalid ns_coefficients: {group['ns_coefficients']!r} (must be (a, b, c))")
        if group["adjust_lr_fn"] not in _ADJUST:
            raise ValueError(f"Invalid adjust_lr_fn: {group['adjust_lr_fn']!r} "
                             "(must be None, 'original' or 'match_rms_adamw')")
        if group["ns_method"] not in NS_METHODS:
            raise ValueError(f"Invalid ns_method: {group['ns_method']!r} "
                             f"(must be one of {', '.join(map(repr, NS_METHODS))})")
        dtype = group["ns_dtype"]
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Invalid ns_dtype: {dtype!r} (must be a floating torch.dtype or None)")
        gi = len(self.param_groups) - 1
        for i, p in enumerate(group["params"] if group["use_muon"] is True else ()):
            why = None
            if p.ndim < 2:
                why = f"it has shape {tuple(p.shape)}; Muon orthogonalizes matrices (ndim >= 2)"
            elif p.is_complex():
                why = "it is complex; Muon's iteration is real"
            if why:
                raise ValueError(f"Invalid parameter for Muon: {param_label(group, gi, i)}: {why}. "
                                 "Put it in a use_muon=False group (AdamW) or pass the model to route it.")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if _routes_to_muon(p, group):
            return self.declaration.init_state(p, group)
        return _AUX.init_state(p, group)

    def _update(self, backend: str, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], overrides: Any = None) -> None:
        rows = [i for i, p in enumerate(params) if _routes_to_muon(p, group)]
        aux = [i for i in range(len(params)) if i not in set(rows)]
        if rows:
            run_declaration(self.declaration, backend, group, *([c[i] for i in rows] for c in (params, grads, states)))
        if aux:
            view = group if group["use_muon"] is False else _aux_view(group)
            run_declaration(_AUX, backend, view, *([c[i] for i in aux] for c in (params, grads, states)))


#: The auxiliary optimizer of the parameters Muon does not orthogonalize.
_AUX = AdamW.declaration


def _routes_to_muon(p: Tensor, group: dict[str, Any]) -> bool:
    """``use_muon`` True/False decides for a group; ``"auto"`` (a framework-built group) per parameter."""
    use = group["use_muon"]
    return (p.ndim >= 2 and not p.is_complex()) if use == "auto" else bool(use)


def _aux_view(group: dict[str, Any]) -> dict[str, Any]:
    """An auto group seen by the auxiliary AdamW: its ``adamw_*`` hyperparameters."""
    return {**group, "lr": group["adamw_lr"], "betas": group["adamw_betas"], "eps": group["adamw_eps"],
            "weight_decay": group["adamw_weight_decay"]}
