"""The learning-rate range test (Smith 2017), with restoration and trustworthy suggestions."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["find_lr", "LRFinderResult", "suggest_lr", "METHODS"]

#: Suggestion methods. ``"valley"`` is the default (see :func:`suggest_lr`).
METHODS = ("valley", "steepest", "min_loss")


@dataclass
class LRFinderResult:
    """What :func:`find_lr` measured.

    Attributes:
        lrs: the lr of the reference group at each iteration.
        losses: the raw loss at each iteration.
        smoothed: the bias-corrected exponential moving average of ``losses``.
        suggestion: the suggested lr for the reference group (``None`` when no method could decide).
        method: the method that produced ``suggestion``.
        suggestions: every method's suggestion (``None`` where it could not decide).
        group_lrs: the suggested lr for every param group (the sweep keeps the groups' ratios).
        stopped_early: why the sweep ended before ``num_iter`` (``None`` when it ran to the end).
        notes: explanations (e.g. why no suggestion).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    method: str
    suggestions: dict[str, float | None] = field(default_factory=dict)
    group_lrs: list[float] | None = None
    stopped_early: str | None = None
    notes: list[str] = field(default_factory=list)

    def plot(self, ax: Any = None, *, show_raw: bool = True) -> Any:
        """Plot loss against lr (log x axis) with the suggestions marked.

        Args:
            ax: a matplotlib ``Axes``, ``None`` (new figure) or a file path (saved there).
            show_raw: also draw the unsmoothed losses.

        Returns:
            The ``Axes`` drawn on.
        """
        try:
            import matplotlib
            if not isinstance(ax, type(None)) and isinstance(ax, (str, Path)):
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - optional dependency
            raise ImportError("LRFinderResult.plot needs matplotlib (pip install matplotlib)") from exc
        path = ax if isinstance(ax, (str, Path)) else None
        if ax is None or path is not None:
            _, ax = plt.subplots(figsize=(6, 4))
        if show_raw:
            ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        for name, lr in self.suggestions.items():
            if lr is not None:
                ax.axvline(lr, linestyle="--", alpha=0.6,
                           label=f"{name}: {lr:.2e}" + (" (suggested)" if name == self.method else ""))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        if path is not None:
            ax.figure.savefig(path, bbox_inches="tight")
            plt.close(ax.figure)
        return ax


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("Invalid batches: the iterable yielded no batch")
        if isinstance(batches, Iterator):  # a one-shot iterator is exhausted: reuse what we saw
            raise ValueError("Invalid batches: iterator exhausted before num_iter; pass a list or DataLoader")


def _default_forward(loss_fn: Callable[..., Tensor]) -> Callable[[nn.Module, Any], Tensor]:
    def forward(model: nn.Module, batch: Any) -> Tensor:
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return loss_fn(model(batch[0]), batch[1])
        if isinstance(batch, dict):
            return loss_fn(model(**batch))
        return loss_fn(model(batch))
    return forward


def _schedule(start: float, end: float, n: int, mode: str) -> np.ndarray:
    if mode == "exp":
        return np.geomspace(start, end, n)
    if mode == "linear":
        return np.linspace(start, end, n)
    raise ValueError(f"Invalid mode: {mode!r} (must be 'exp' or 'linear')")


def _check_args(start_lr: float, end_lr: float, num_iter: int, smooth: float, diverge: float) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ValueError(f"Invalid start_lr: {start_lr} (must be > 0)")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ValueError(f"Invalid end_lr: {end_lr} (must be > start_lr={start_lr})")
    if int(num_iter) != num_iter or num_iter < 2:
        raise ValueError(f"Invalid num_iter: {num_iter} (must be an integer >= 2)")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"Invalid smooth: {smooth} (must be in [0, 1))")
    if not diverge > 1.0:
        raise ValueError(f"Invalid diverge_threshold: {diverge} (must be > 1)")


class _Snapshot:
    """Deep copies of everything the sweep changes: weights, buffers, optimizer state, grads, RNG."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model_state = copy.deepcopy(model.state_dict())
        self.opt_state = copy.deepcopy(optimizer.state_dict())
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
        self.training = model.training
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model.load_state_dict(self.model_state)
        optimizer.load_state_dict(self.opt_state)
        for p, g in zip(model.parameters(), self.grads):
            p.grad = None if g is None else g.clone()
        model.train(self.training)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def find_lr(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any],
            loss_fn: Callable[..., Tensor] | None = None, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_iter: int = 100, mode: str = "exp", *, smooth: float = 0.98, diverge_threshold: float = 4.0,
            method: str = "valley", forward: Callable[[nn.Module, Any], Tensor] | None = None,
            skip_start: int = 5) -> LRFinderResult:
    """Sweep the lr from ``start_lr`` to ``end_lr`` over ``num_iter`` training steps and suggest one.

    At iteration :math:`i` every group's lr is :math:`\\eta_i\\,r_g` with :math:`r_g` the group's
    lr divided by the reference group's (the first group with a non-zero lr), so multi-group
    optimizers (Muon + auxiliary AdamW, per-layer lrs) keep their ratios. :math:`\\eta_i` grows
    geometrically (``mode="exp"``) or linearly. The loss is smoothed with a bias-corrected EMA

    .. math:: a_i = \\beta a_{i-1} + (1-\\beta)\\,\\ell_i, \\qquad \\bar\\ell_i = a_i / (1-\\beta^{i+1})

    and the sweep stops when :math:`\\bar\\ell_i > k\\,\\min_{j\\le i}\\bar\\ell_j` (``k`` =
    ``diverge_threshold``, 4 by default as in the source documents) or the loss is not finite.
    Afterwards the model (weights, buffers, grads, train/eval mode), the optimizer (state and
    hyperparameters) and torch's RNG are restored exactly from deep copies, also when the loss
    function raises.

    Args:
        model: the module being trained.
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters (descent's or torch's).
        batches: a list, DataLoader or other re-iterable of batches; cycled if shorter than num_iter.
        loss_fn: ``loss_fn(model(x), y)`` for ``(x, y)`` batches (``loss_fn(model(batch))`` otherwise).
        start_lr, end_lr: the sweep range of the reference group's lr.
        num_iter: number of training steps.
        mode: ``"exp"`` (geometric, default) or ``"linear"``.
        smooth: EMA coefficient :math:`\\beta` (0 disables smoothing).
        diverge_threshold: stop when the smoothed loss exceeds this multiple of its minimum.
        method: the suggestion returned in ``.suggestion``: ``"valley"``, ``"steepest"``, ``"min_loss"``.
        forward: ``forward(model, batch) -> loss`` replaces ``loss_fn`` for other batch layouts.
        skip_start: iterations ignored by the suggestion rules (the EMA's warm-up).

    Returns:
        An :class:`LRFinderResult`.

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.

    Example:
        >>> import torch, descent
        >>> torch.manual_seed(0)
        ... # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(256, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        >>> model = torch.nn.Linear(4, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> batches = [(x[i:i + 32], y[i:i + 32, None]) for i in range(0, 256, 32)]
        >>> res = descent.find_lr(model, opt, batches, torch.nn.functional.mse_loss, num_iter=60)
        >>> res.method, res.suggestion is not None
        ('valley', True)
    """
    _check_args(start_lr, end_lr, num_iter, smooth, diverge_threshold)
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (must be one of {METHODS})")
    if forward is None:
        if loss_fn is None:
            raise ValueError("Invalid loss_fn: None (pass loss_fn or forward)")
        forward = _default_forward(loss_fn)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("Invalid model: it has no trainable parameters")
    base = [float(g["lr"]) for g in optimizer.param_groups]
    ref = next((b for b in base if b > 0), None)
    if ref is None:
        raise ValueError("Invalid optimizer: every param group has lr=0, so no lr ratio can be kept")
    ratios = [b / ref for b in base]
    snapshot = _Snapshot(model, optimizer)
    try:
        lrs, losses, smoothed, stop = _sweep(model, optimizer, _cycle(batches), forward, ratios,
                                             _schedule(start_lr, end_lr, int(num_iter), mode), smooth,
                                             diverge_threshold)
    finally:
        snapshot.restore(model, optimizer)
    return _result(lrs, losses, smoothed, stop, method, ratios, skip_start)


def _sweep(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Any],
           forward: Callable[[nn.Module, Any], Tensor], ratios: list[float], schedule: np.ndarray,
           smooth: float, diverge: float) -> tuple[list[float], list[float], list[float], str | None]:
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, stop = 0.0, math.inf, None
    model.train()
    for i, lr in enumerate(schedule.tolist()):
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        optimizer.zero_grad(set_to_none=True)
        loss = forward(model, next(batches))
        value = float(loss.detach())
        if not math.isfinite(value):
            stop = f"loss became {value} at lr={lr:.3g}"
            break
        loss.backward()
        optimizer.step()
        avg = smooth * avg + (1 - smooth) * value
        s = avg / (1 - smooth ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(s)
        best = min(best, s)
        if s > diverge * best:
            stop = f"smoothed loss {s:.4g} > {diverge} x best {best:.4g} at lr={lr:.3g}"
            break
    return lrs, losses, smoothed, stop


def suggest_lr(lrs: list[float], smoothed: list[float], method: str = "valley",
               skip_start: int = 5) -> float | None:
    """Suggest an lr from a range test's curve.

    * ``"steepest"``: the lr where :math:`d\\bar\\ell / d\\log\\eta` is most negative (Smith;
      fastai's ``steep``). Known to mislead on noisy curves (pytorch-lr-finder #106,
      transformers #16013): one noisy dip decides.
    * ``"min_loss"``: the lr of the lowest smoothed loss, divided by 10 (the source documents).
    * ``"valley"`` (descent's default): find the *descent region*, the lrs between where the
      smoothed loss has made 10 % of its total drop :math:`\\bar\\ell_0 - \\bar\\ell_{\\min}` and
      where it has made 90 % of it, and return its geometric midpoint. It uses only two level
      crossings of the smoothed curve, not a derivative, so a single noisy step cannot move it
      far, and it stays a safe margin below the minimum (where training is already unstable).

    Returns ``None`` when the curve never goes down (nothing to suggest).
    """
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (must be one of {METHODS})")
    lr = np.asarray(lrs, dtype=float)
    s = np.asarray(smoothed, dtype=float)
    start = min(skip_start, max(len(s) - 3, 0))
    lr, s = lr[start:], s[start:]
    if len(s) < 3:
        return None
    imin = int(np.argmin(s))
    drop = s[0] - s[imin]
    if imin == 0 or not drop > 0:
        return None
    if method == "min_loss":
        return float(lr[imin] / 10.0)
    if method == "steepest":
        slope = np.gradient(s[: imin + 1], np.log(lr[: imin + 1]))
        return float(lr[int(np.argmin(slope))])
    head = s[: imin + 1]
    first = int(np.argmax(head <= s[0] - 0.1 * drop))
    last = int(np.argmax(head <= s[0] - 0.9 * drop))
    return float(math.exp(0.5 * (math.log(lr[first]) + math.log(lr[last]))))


def _result(lrs: list[float], losses: list[float], smoothed: list[float], stop: str | None, method: str,
            ratios: list[float], skip_start: int) -> LRFinderResult:
    notes: list[str] = []
    if not lrs:
        notes.append(f"no finite loss was recorded ({stop}); lower start_lr or check the data")
        sugg = dict.fromkeys(METHODS)
    else:
        sugg = {m: suggest_lr(lrs, smoothed, m, skip_start) for m in METHODS}
        if sugg[method] is None:
            notes.append("the smoothed loss never went down: widen the range (raise end_lr) or add iterations")
        if stop is None:
            notes.append("the loss did not diverge within the range: the best lr may be above end_lr")
    best = sugg[method]
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=best, method=method,
                          suggestions=sugg, group_lrs=None if best is None else [best * r for r in ratios],
                          stopped_early=stop, notes=notes)
