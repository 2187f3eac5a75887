"""Mixed precision in the right order, with skipped steps reported, and a bf16-vs-fp32 agreement check.

bf16 has fp32's exponent range, so it needs no loss scaling: autocast, backward, clip,
step. fp16 overflows easily and needs a ``GradScaler``, and the order matters:

    scale(loss) → backward → unscale_ → clip → scaler.step → scaler.update

(clipping before ``unscale_`` clips the *scaled* gradients, i.e. almost always). When the
scaler finds an Inf/NaN it silently skips ``optimizer.step()`` and lowers the scale;
users cannot tell (pytorch #152279). :class:`MixedPrecision` detects that (the scale
went down, or the unscaled gradient norm is non-finite), counts it, and records it in
the param groups (``group["skipped_steps"]``) so that
:class:`descent.schedules.Scheduler` does not advance the warmup on it.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from .clip import ClipResult, clip_grad_norm_
from .nonfinite import find_nonfinite, record_skip

__all__ = ["MixedPrecision", "StepReport", "AgreementReport", "precision_agreement"]

log = logging.getLogger("descent.stability.amp")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"Invalid dtype: {dtype} (must be bfloat16, float16 or float32)")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Invalid dtype: {dtype!r} (must be one of {sorted(_DTYPES)})")
    return _DTYPES[dtype]


@dataclass
class StepReport:
    """What one :meth:`MixedPrecision.step` did.

    Attributes:
        stepped: whether the optimizer applied an update.
        grad_norm: the unscaled gradient norm before clipping (``None`` without ``max_norm``).
        scale: the loss scale used for this step (``None`` without a scaler).
        reason: why the step was skipped (empty when it was not).
    """

    stepped: bool
    grad_norm: ClipResult | None = None
    scale: float | None = None
    reason: str = ""


class MixedPrecision:
    """bf16 autocast, or fp16 autocast + ``GradScaler``, stepping in the right order.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        dtype: ``"bf16"`` (default; no scaler), ``"fp16"`` (scaler) or ``"fp32"`` (autocast off).
        device_type: ``"cpu"``, ``"cuda"``, ...; default: the device of the first parameter.
        max_norm: clip the unscaled gradients to this norm (``None``: neither clip nor
            compute the norm). For NaN safety without a scaler (bf16), wrap the optimizer
            with :func:`descent.skip_nonfinite`; its skips are reported here too.
        norm_type: norm for clipping.
        scaler_kwargs: extra arguments of ``torch.amp.GradScaler`` (``init_scale``, ...).

    Example:
        >>> import torch
        >>> from descent.stability.amp import MixedPrecision
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mp = MixedPrecision(opt, "bf16", max_norm=1.0)
        >>> with mp.autocast():
        ...     loss = model(torch.randn(8, 4)).float().pow(2).mean()
        >>> mp.backward(loss)
        >>> mp.step().stepped
        True
    """

    def __init__(self, optimizer: torch.optim.Optimizer, dtype: str | torch.dtype = "bf16", *,
                 device_type: str | None = None, max_norm: float | None = None, norm_type: float = 2.0,
                 scaler_kwargs: dict[str, Any] | None = None) -> None:
        self.optimizer = optimizer
        self.dtype = _dtype(dtype)
        if device_type is None:
            device_type = optimizer.param_groups[0]["params"][0].device.type
        self.device_type = device_type
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scaler = (torch.amp.GradScaler(device_type, **(scaler_kwargs or {}))
                       if self.dtype == torch.float16 else None)
        self.steps = 0
        self.skipped_steps = 0

    def _params(self) -> Iterator[torch.Tensor]:
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def autocast(self) -> AbstractContextManager[Any]:
        """The autocast context for the forward pass (disabled for fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()``, scaled first when a scaler is in use."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(**kwargs)

    def step(self, zero_grad: bool = True) -> StepReport:
        """unscale → clip → step → update; report whether the update was applied."""
        opt = self.optimizer
        before = [int(g.get("skipped_steps", 0)) for g in opt.param_groups]
        scale = None
        if self.scaler is not None:
            scale = float(self.scaler.get_scale())
            self.scaler.unscale_(opt)
        norm = clip_grad_norm_(list(self._params()), self.max_norm, self.norm_type) if self.max_norm else None
        where = find_nonfinite(opt.param_groups) if (norm is not None and not norm.finite) else {}
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
            scaler_skipped = float(self.scaler.get_scale()) < scale
        else:
            scaler_skipped = False
            opt.step()
        after = [int(g.get("skipped_steps", 0)) for g in opt.param_groups]
        optimizer_skipped = any(a > b for a, b in zip(after, before))
        reason = ""
        if scaler_skipped:
            record_skip(opt.param_groups, where)
            reason = f"GradScaler found Inf/NaN at scale {scale:g} and skipped optimizer.step()"
        elif optimizer_skipped:
            reason = "the optimizer skipped a step with non-finite gradients"
        self.steps += 1
        if reason:
            self.skipped_steps += 1
            log.warning("mixed precision step %d skipped: %s", self.steps, reason)
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        return StepReport(stepped=not reason, grad_norm=norm, scale=scale, reason=reason)

    def state_dict(self) -> dict[str, Any]:
        """Scaler state and counters."""
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "steps": self.steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.steps, self.skipped_steps = int(state["steps"]), int(state["skipped_steps"])


@dataclass
class AgreementReport:
    """Loss curves of the same run in fp32 and in low precision, and how far they diverge.

    Attributes:
        losses_fp32, losses_low: per-step training losses.
        max_abs_diff, max_rel_diff: over all steps (relative to ``|fp32 loss|``).
        final_rel_diff: at the last step.
        tolerance: the relative divergence accepted.
        agree: ``max_rel_diff <= tolerance`` (and every loss finite).
    """

    dtype: str
    losses_fp32: list[float]
    losses_low: list[float]
    max_abs_diff: float
    max_rel_diff: float
    final_rel_diff: float
    tolerance: float
    agree: bool = field(default=False)

    def explain(self) -> str:
        """One line for humans."""
        verdict = "agree" if self.agree else "DIVERGE"
        return (f"{self.dtype} vs fp32 over {len(self.losses_fp32)} steps: {verdict} (max relative loss "
                f"difference {self.max_rel_diff:.3g}, final {self.final_rel_diff:.3g}, tolerance {self.tolerance:g})")


def _train(model: torch.nn.Module, make_opt: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
           batches: list[Any], loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor], dtype: str) -> list[float]:
    mp = MixedPrecision(make_opt(model.parameters()), dtype)
    losses = []
    for batch in batches:
        with mp.autocast():
            loss = loss_fn(model, batch)
        losses.append(float(loss.detach().float()))
        mp.backward(loss.float())
        mp.step()
    return losses


def precision_agreement(model: torch.nn.Module, optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                        batches: Iterable[Any], loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor], *,
                        dtype: str = "bf16", tolerance: float = 0.05) -> AgreementReport:
    """Train two copies of ``model`` on the same ``batches``, in fp32 and in ``dtype``; compare losses.

    The source documents' check before a long low-precision run: if the loss curves
    separate by more than a few percent in the first steps, bf16/fp16 is not safe for
    this model as is (look at normalization, softmax, loss reductions in low precision).

    Args:
        model: the model (it is deep-copied twice; the original is not changed).
        optimizer: ``params -> optimizer`` factory, e.g. ``lambda p: torch.optim.AdamW(p, 1e-3)``.
        batches: the batches, each passed to ``loss_fn(model, batch)``.
        loss_fn: returns the scalar loss.
        dtype: ``"bf16"`` or ``"fp16"``.
        tolerance: accepted max relative loss difference.

    Example:
        >>> import torch
        >>> from descent.stability.amp import precision_agreement
        >>> _ = torch.manual_seed(0); x, y = torch.randn(64, 8), torch.randn(64, 1)
        >>> r = precision_agreement(torch.nn.Linear(8, 1), lambda p: torch.optim.SGD(p, lr=0.05),
        ...                         [(x, y)] * 10, lambda m, b: torch.nn.functional.mse_loss(m(b[0]).float(), b[1]))
        >>> r.agree
        True
    """
    batches = list(batches)
    if not batches:
        raise ValueError("Invalid batches: empty (need at least one batch)")
    low = _train(copy.deepcopy(model), optimizer, batches, loss_fn, dtype)
    ref = _train(copy.deepcopy(model), optimizer, batches, loss_fn, "fp32")
    abs_d = [abs(a - b) for a, b in zip(ref, low)]
    rel_d = [d / max(abs(a), 1e-12) for d, a in zip(abs_d, ref)]
    finite = all(math.isfinite(v) for v in ref + low)
    max_rel = max(rel_d) if finite else math.inf
    report = AgreementReport(dtype, ref, low, max(abs_d) if finite else math.inf, max_rel,
                             rel_d[-1] if finite else math.inf, tolerance)
    report.agree = finite and max_rel <= tolerance
    return report
