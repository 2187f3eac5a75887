"""PNG plots for reports (matplotlib, Agg backend): loss curves, lr, grad norm, LR finder, trajectories.

Every function writes one PNG and returns its path.

Example:
    >>> from descent.reporting.plotting import line_plot
    >>> line_plot({"run": ([0, 1, 2], [3.0, 2.0, 1.5])}, "/tmp/loss.png", ylabel="loss")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["line_plot", "grad_norm_plot", "band_plot", "trajectory_plot", "lr_finder_plot", "loss_limits"]

Series = tuple[Sequence[float], Sequence[float]]


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'descent[plot]'") from None

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def line_plot(series: Mapping[str, Series], path: str | Path, *, title: str = "", xlabel: str = "step",
              ylabel: str = "", logy: bool = False, logx: bool = False) -> Path:
    """One line per named series ``(x, y)``; ``None``/non-finite y values are dropped."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, (xs, ys) in series.items():
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y == y and abs(y) != float("inf")]
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def grad_norm_plot(steps: Sequence[float], norms: Sequence[float], path: str | Path, *,
                   clip: float | None = None, clipped: Sequence[Any] | None = None, title: str = "") -> Path:
    """Gradient norm per step, the clipping threshold as a dashed line and clipped steps marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(steps, norms, label="grad norm (before clipping)")
    if clip is not None:
        ax.axhline(clip, color="red", linestyle="--", label=f"clip max_norm = {clip:g}")
    if clipped is not None:
        pts = [(s, n) for s, n, c in zip(steps, norms, clipped) if c]
        if pts:
            ax.scatter(*zip(*pts), s=8, color="red", label=f"clipped ({len(pts)} steps)")
    ax.set(title=title, xlabel="step", ylabel="global grad norm")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def band_plot(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path, *, title: str = "",
              ylabel: str = "loss", logy: bool = True) -> Path:
    """Mean curve per name with a min-max band over its seeds (curves of equal length)."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, runs in curves.items():
        if not runs:
            continue
        arr = np.array([[np.nan if v is None else v for v in r] for r in runs], dtype=float)
        x = np.arange(arr.shape[1])
        ax.plot(x, np.nanmean(arr, 0), label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), alpha=0.2)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def trajectory_plot(fn: Any, paths: Mapping[str, Sequence[Sequence[float]]], path: str | Path, *,
                    xlim: tuple[float, float], ylim: tuple[float, float],
                    minima: Sequence[Sequence[float]] = (), title: str = "") -> Path:
    """Contours of ``fn(x, y)`` (log levels) with each optimizer's path of points."""
    import numpy as np

    plt = _plt()
    xs, ys = np.meshgrid(np.linspace(*xlim, 200), np.linspace(*ylim, 200))
    z = fn(xs, ys)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contour(xs, ys, np.log1p(z - z.min()), levels=30, cmap="viridis", linewidths=0.6)
    for name, pts in paths.items():
        arr = np.asarray(pts, dtype=float)
        ax.plot(arr[:, 0], arr[:, 1], ".-", markersize=2, linewidth=1, label=name)
    for m in minima:
        ax.plot(*m, "k*", markersize=10)
    ax.set(title=title, xlim=xlim, ylim=ylim, xlabel="x", ylabel="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


_SUGGESTION_STYLES = [("tab:red", "-", "o"), ("tab:green", "--", "s"), ("tab:purple", ":", "^"),
                      ("tab:brown", "-.", "D")]


def loss_limits(losses: Sequence[float], head: float | None = None, factor: float = 3.0
                ) -> tuple[float, float, bool]:
    """Y limits ``(low, high, clipped)`` that keep a diverging tail from flattening the curve.

    ``high`` is at most ``low + factor * (head - low)`` with ``head`` the first loss (the
    loss before the lr got large); ``clipped`` says whether any finite loss lies above it.
    """
    xs = [float(v) for v in losses if v is not None and math.isfinite(v)]
    if not xs:
        return 0.0, 1.0, False
    low, top = min(xs), max(xs)
    head = xs[0] if head is None or not math.isfinite(head) else head
    high = top if head <= low else min(top, low + factor * (head - low))
    pad = 0.05 * (high - low) if high > low else (abs(low) * 0.05 or 1.0)
    return low - pad if low - pad > 0 or low <= 0 else low * 0.9, high + pad, top > high + pad


def lr_finder_plot(result: Any, path: str | Path, *, title: str = "") -> Path:
    """The LR range test: loss against lr (log x), the axis clipped above a diverging tail, each
    method's suggestion in its own colour, line style and marker, the one used drawn solid and named.

    Args:
        result: a :class:`descent.tools.lr_finder.LRFinderResult` (``lrs``, ``losses``, ``smoothed``,
            ``suggestions``, ``suggestion``, ``method``).
        path: the PNG to write.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    lrs, raw, smooth = list(result.lrs), list(result.losses), list(result.smoothed)
    ax.plot(lrs, raw, color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, smooth, color="tab:blue", label="smoothed loss")
    low, high, clipped = loss_limits(smooth + raw, head=smooth[0] if smooth else None)
    if low > 0 and high / low > 10:
        ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.set_xscale("log")
    for i, (name, lr) in enumerate(result.suggestions.items()):
        color, style, marker = _SUGGESTION_STYLES[i % len(_SUGGESTION_STYLES)]
        chosen = name == result.method and lr is not None
        label = f"{name}: " + ("no suggestion" if lr is None else f"{lr:.3g}") + (" (suggested)" if chosen else "")
        if lr is None:
            ax.plot([], [], color=color, linestyle=style, label=label)
            continue
        ax.axvline(lr, color=color, linestyle="-" if chosen else style, linewidth=2.0 if chosen else 1.2,
                   label=label)
        j = min(range(len(lrs)), key=lambda k: abs(math.log(lrs[k]) - math.log(lr))) if lrs else None
        if j is not None and smooth and math.isfinite(smooth[j]) and low <= smooth[j] <= high:
            ax.plot([lrs[j]], [smooth[j]], marker=marker, color=color, markersize=7, linestyle="none")
    note = " (loss axis clipped: the tail diverges)" if clipped else ""
    ax.set(title=(title or "LR range test") + note, xlabel="learning rate (log)", ylabel="loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
