"""NaN-safe stepping: detect non-finite gradients, skip the update, count it, name the parameters.

One detection function, :func:`nonfinite_indices`, is shared by descent's optimizers
(``skip_nonfinite=True``, :mod:`descent.optim._base`) and by :class:`NonFiniteGuard`,
which gives the same behaviour to any ``torch.optim`` optimizer. Both record, in every
checked param group, ``group["skipped_steps"]`` (a count) and ``group["nonfinite_params"]``
(the positions/names of the offending parameters at the last skip), which is what
:class:`descent.schedules.Scheduler` reads to keep a warmup from advancing on a skipped step.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["nonfinite_indices", "find_nonfinite", "record_skip", "param_label",
           "NonFiniteGuard", "skip_nonfinite"]

log = logging.getLogger("descent.stability.nonfinite")


def nonfinite_indices(tensors: Sequence[Tensor]) -> list[int]:
    """Indices of the tensors that hold a NaN or an Inf (one fused max-abs pass, one sync).

    Example:
        >>> import torch
        >>> nonfinite_indices([torch.ones(2), torch.tensor([1.0, float("inf")])])
        [1]
    """
    if any(type(t).__name__ == "DTensor" for t in tensors):  # FSDP2: a NaN in any rank's shard counts everywhere
        from ..distributed import nonfinite_indices as on_mesh

        return on_mesh(tensors)
    keep = [i for i, t in enumerate(tensors) if t.numel()]  # the inf-norm of an empty tensor raises
    if not keep:
        return []
    real = [tensors[i] if not tensors[i].is_complex() else torch.view_as_real(tensors[i]) for i in keep]
    norms = torch._foreach_norm(real, math.inf)
    finite = torch.isfinite(torch.stack([n.to(torch.float32).cpu() for n in norms]))
    if bool(finite.all()):
        return []
    return [keep[k] for k in torch.nonzero(~finite).flatten().tolist()]


def param_label(group: dict[str, Any], group_index: int, index: int) -> str:
    """Human-readable position of a parameter, with its name when the group has names."""
    where = f"param_groups[{group_index}]['params'][{index}]"
    names = group.get("param_names")
    if names is not None and index < len(names):
        return f"{where} ({names[index]!r})"
    return where


def find_nonfinite(param_groups: Sequence[dict[str, Any]], groups: Sequence[int] | None = None) -> dict[int, list[str]]:
    """Group index -> labels of the parameters whose gradient holds NaN/Inf (empty when all finite).

    The one detection every NaN-safe path uses (descent's ``skip_nonfinite``,
    :class:`NonFiniteGuard`, :class:`descent.MixedPrecision`). ``groups`` restricts the
    check to some group indices.
    """
    where: dict[int, list[str]] = {}
    for gi in range(len(param_groups)) if groups is None else groups:
        group = param_groups[gi]
        index = [i for i, p in enumerate(group["params"]) if p.grad is not None]
        bad = nonfinite_indices([group["params"][i].grad for i in index])
        if bad:
            where[gi] = [param_label(group, gi, index[k]) for k in bad]
    return where


def record_skip(param_groups: Sequence[dict[str, Any]], where: dict[int, list[str]]) -> None:
    """Count one skipped step in every group and store which parameters caused it."""
    for gi, group in enumerate(param_groups):
        group["skipped_steps"] = int(group.get("skipped_steps", 0)) + 1
        group["nonfinite_params"] = list(where.get(gi, []))


class NonFiniteGuard(torch.optim.Optimizer):
    """Wrap any ``torch.optim`` optimizer so that a step with a NaN/Inf gradient is skipped.

    The wrapper *is* a ``torch.optim.Optimizer`` (LR schedulers, ``GradScaler`` and
    checkpointing see the wrapped optimizer's ``param_groups``, ``state`` and
    ``state_dict``), and its step is: evaluate the closure (if any), check every gradient
    with :func:`nonfinite_indices`; if one is non-finite, do nothing to the parameters or
    the optimizer state, add 1 to ``group["skipped_steps"]``, set
    ``group["nonfinite_params"]`` and log a warning; otherwise step the wrapped optimizer.

    Note: the check costs one max-abs pass over the gradients and one device sync per step.
    A closure is evaluated once for the check and its first result is reused by the wrapped
    optimizer (LBFGS-style optimizers may call it again).

    Args:
        optimizer: the optimizer to guard.

    Example:
        >>> import torch, descent
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = descent.NonFiniteGuard(torch.optim.SGD([p], lr=0.1))
        >>> p.grad = torch.tensor([1.0, float("nan")])
        >>> opt.step(); opt.param_groups[0]["skipped_steps"], p.tolist()
        (1, [1.0, 1.0])
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:  # noqa: D107 - documented on the class
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        self.__dict__["_inner"] = optimizer
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                     "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            self.__dict__[name] = OrderedDict()
        for group in optimizer.param_groups:
            group.setdefault("skipped_steps", 0)
        self._patch_step_function()

    # The wrapped optimizer's containers, shared rather than copied.
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped optimizer."""
        return self.__dict__["_inner"]

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far (the first group's count)."""
        return int(self.param_groups[0].get("skipped_steps", 0))

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"NonFiniteGuard({self.optimizer!r})"

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped optimizer's ``state_dict`` (the skip counts travel in its param groups)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load into the wrapped optimizer."""
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer."""
        self.optimizer.add_param_group(param_group)
        self.param_groups[-1].setdefault("skipped_steps", 0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the wrapped optimizer's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Check the gradients; step the wrapped optimizer only if they are all finite."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        where = find_nonfinite(self.param_groups)
        if where:
            record_skip(self.param_groups, where)
            log.warning("skipped a %s step with non-finite gradients in %s", type(self.optimizer).__name__,
                        ", ".join(w for ws in where.values() for w in ws))
            return loss
        if closure is None:
            return self.optimizer.step()
        first = [loss]

        def cached() -> Any:
            if first:
                return first.pop()
            with torch.enable_grad():
                return closure()

        return self.optimizer.step(cached)


def skip_nonfinite(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """NaN-safe version of ``optimizer``: descent's switch it on in place, others are wrapped.

    For a :class:`descent.Optimizer` this sets ``skip_nonfinite=True`` in every group
    and returns the same object; any other optimizer is wrapped in :class:`NonFiniteGuard`.

    Example:
        >>> import torch, descent
        >>> opt = descent.skip_nonfinite(torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]))
        >>> type(opt).__name__
        'NonFiniteGuard'
    """
    native = "skip_nonfinite" in getattr(optimizer, "defaults", {})  # a descent optimizer
    if native or isinstance(optimizer, NonFiniteGuard):
        for group in optimizer.param_groups:
            group["skip_nonfinite"] = True
        if native:
            optimizer.defaults["skip_nonfinite"] = True
        return optimizer
    return NonFiniteGuard(optimizer)
