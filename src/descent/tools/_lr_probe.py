"""Short probe runs that turn a range test into a suggestion for a run of a given length.

The range test measures where training becomes unstable (its smoothed loss bottoms out at the
"edge" lr :math:`\\eta_e`); a full run does best well below that edge, and how far below depends
on the optimizer, the task and the run's length. So instead of a fixed divisor, :func:`search`
measures: it trains short *probe* runs of ``P`` steps from the same starting point, with the
run's own schedule compressed to ``P`` steps, at lrs on a quarter-decade grid below the edge, and
keeps the lr where the probes' final losses bottom out (the vertex of a parabola in log-lr through the
lowest probe and its neighbours). See :func:`descent.find_lr` for the constants and where
they were chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Probe", "ProbeSearch", "search", "probe_length", "curve_problem", "edge_lr", "cycle"]

#: fraction of the run a probe trains for (P = fraction * total_steps), and its bounds (0.5 against
#: 0.25 on the calibration problems, see find_lr).
PROBE_FRACTION = 0.5
MIN_PROBE_STEPS = 30
MAX_PROBE_STEPS = 500
#: the first probes, in quarter decades below the edge lr (0 = the edge, 8 = edge / 100).
FIRST_PROBES = (0, 2, 4, 6, 8)
#: how many more half-decade steps downward when the lowest probe is still the best.
MAX_EXTEND = 2
#: the suggestion is the best probe's lr times (P / total_steps) ** HORIZON_EXPONENT: a run 4x
#: longer than the probe wants a 2x smaller lr (chosen on calibration problems, see find_lr).
HORIZON_EXPONENT = 0.5
#: probes whose score is within this fraction of the best (plus an absolute 0.01) make the range.
RANGE_TOLERANCE = 0.05
#: a probe whose loss exceeds this multiple of its first loss has diverged.
PROBE_DIVERGE = 4.0
#: how the best probe lr is read off the scores: ``"parabola"`` (the vertex of a parabola in log-lr
#: through the lowest probe and its two neighbours: within half a step of it) or ``"argmin"`` (the lowest
#: probe; the method before, see find_lr for both on the calibration seeds).
SELECT = "parabola"


def probe_length(total_steps: int, fraction: float | None = None) -> int:
    """Steps of each probe for a run of ``total_steps`` (never more than the run)."""
    p = int(round((PROBE_FRACTION if fraction is None else fraction) * total_steps))
    return int(min(total_steps, max(MIN_PROBE_STEPS, min(MAX_PROBE_STEPS, p))))


@dataclass
class ProbeSearch:
    """What :func:`search` measured: ``scores[lr]`` (``inf`` = diverged) and the chosen lr."""

    best: float
    low: float
    high: float
    scores: dict[float, float] = field(default_factory=dict)
    factor: float = 1.0


def search(probe: Callable[[float], float], edge: float, probe_steps: int, total_steps: int,
           horizon_exponent: float | None = None) -> ProbeSearch:
    """Probe quarter-decade lrs below ``edge`` and return the best, scaled for the run's length.

    ``probe(lr)`` trains one probe and returns its score (lower is better; ``inf`` if it diverged).
    The first probes are ``edge * 10 ** (-k / 4)`` for ``k`` in :data:`FIRST_PROBES`; if the lowest
    one wins, up to :data:`MAX_EXTEND` half-decade steps further down; if the edge itself wins, one
    half-decade step above it; then the two quarter-decade neighbours of the winner. The best lr is
    the vertex of the parabola (in log-lr) through the winner and those neighbours (:data:`SELECT`).
    """
    scores: dict[int, float] = {}

    def run(k: int) -> float:
        if k not in scores:
            s = float(probe(edge * 10.0 ** (-k / 4)))
            scores[k] = s if math.isfinite(s) else math.inf
        return scores[k]

    for k in FIRST_PROBES:
        run(k)
    for _ in range(MAX_EXTEND):
        lowest = max(scores)
        if _argbest(scores) != lowest:
            break
        run(lowest + 2)
    if _argbest(scores) == min(scores):
        run(min(scores) - 2)
    k = _argbest(scores)
    run(k - 1)
    run(k + 1)
    k = _argbest(scores)
    best_score = scores[k]
    alpha = HORIZON_EXPONENT if horizon_exponent is None else horizon_exponent
    factor = (probe_steps / total_steps) ** alpha if probe_steps < total_steps else 1.0
    lrs = {kk: edge * 10.0 ** (-kk / 4) for kk in scores}
    ok = [lrs[kk] for kk, s in scores.items() if math.isfinite(best_score)
          and s <= best_score + RANGE_TOLERANCE * abs(best_score) + 0.01]
    best = edge * 10.0 ** (-(_vertex(scores, k) if SELECT == "parabola" else k) / 4)
    return ProbeSearch(best=best * factor, low=min(ok + [best], default=lrs[k]) * factor,
                       high=max(ok + [best], default=lrs[k]) * factor,
                       scores={lrs[kk]: s for kk, s in sorted(scores.items())}, factor=factor)


def edge_lr(lrs: list[float], smoothed: list[float], stop: str | None, skip_start: int) -> float:
    """The top of the probe grid: the lr of the lowest smoothed loss after the EMA warm-up; when the
    minimum falls inside the warm-up (no visible descent) and the sweep diverged, half a decade
    below where it stopped; otherwise the last lr of the sweep."""
    s = np.asarray(smoothed, dtype=float)
    start = min(skip_start, max(len(s) - 3, 0))
    imin = start + int(np.argmin(s[start:]))
    if imin > start:
        return float(lrs[imin])
    return float(lrs[-1]) / (10.0 ** 0.5 if stop is not None else 1.0)


def _vertex(scores: dict[int, float], k: int) -> float:
    """The minimum, in quarter decades, of the parabola through the scores at ``k - 1, k, k + 1``
    (``k`` itself when a neighbour is missing or diverged, or the parabola opens downward)."""
    a, b, c = scores.get(k - 1, math.inf), scores[k], scores.get(k + 1, math.inf)
    curv = a + c - 2.0 * b
    if not (math.isfinite(a) and math.isfinite(c)) or not curv > 0:
        return float(k)
    return float(min(k + 1.0, max(k - 1.0, k + 0.5 * (a - c) / curv)))


def _argbest(scores: dict[int, float]) -> int:
    """The key of the lowest score; ties (also all-``inf``) go to the smaller lr (larger key)."""
    return min(scores, key=lambda k: (scores[k], -k))


def curve_problem(lrs: list[float], losses: list[float], smoothed: list[float], stop: str | None,
                  skip_start: int, smooth: float = 0.98) -> str | None:
    """Why a range-test curve cannot be used (``None`` when it can).

    * diverged at once: no finite loss, or the sweep stopped within the EMA warm-up
      (``skip_start`` iterations): the range started above the stable lrs;
    * no descent: the smoothed loss never went below its value after the warm-up;
    * noisy: the drop of the smoothed loss is less than 3 standard deviations of the smoothed
      curve's own noise, :math:`\\sigma\\sqrt{(1-\\beta)/(1+\\beta)}` with :math:`\\sigma` the raw
      losses' spread over the first fifth of the sweep (where the lr is too small to train).
    """
    if not lrs:
        return f"diverged at once: no finite loss was recorded ({stop}); lower start_lr or check the data"
    s = np.asarray(smoothed, dtype=float)
    raw = np.asarray(losses, dtype=float)
    imin = int(np.argmin(s))
    if stop is not None and len(s) <= skip_start + 1:
        return f"diverged at once: {stop} within {len(s)} iterations; lower start_lr"
    start = min(skip_start, max(len(s) - 3, 0))
    drop = s[start] - s[imin]
    head = raw[: max(3, len(raw) // 5)]
    noise = float(np.std(head)) * math.sqrt((1 - smooth) / (1 + smooth))
    lost_in_noise = noise > 0 and float(np.ptp(s[start:])) < 6.0 * noise
    if (imin <= start or not drop > 0) and not lost_in_noise:
        return "no descent: the smoothed loss never went down; widen the range (raise end_lr) or add iterations"
    if drop < 3.0 * noise:
        return (f"noisy: the smoothed loss fell by {drop:.3g}, less than 3x its own noise {noise:.3g}; "
                "use larger batches, more iterations or more smoothing")
    return None


def cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("Invalid batches: the iterable yielded no batch")
        if isinstance(batches, Iterator):  # a one-shot iterator is exhausted: reuse what we saw
            raise ValueError("Invalid batches: iterator exhausted before num_iter; pass a list or DataLoader")


class Probe:
    """Trains one probe run from the snapshot and scores it (mean loss of its last quarter)."""

    def __init__(self, model: Any, optimizer: Any, snapshot: Any, batches: Any,
                 forward: Callable[[Any, Any], Any], ratios: list[float],
                 schedule: Callable[[int], float] | None, total_steps: int) -> None:
        self.model, self.optimizer, self.snapshot, self.batches = model, optimizer, snapshot, batches
        self.forward, self.ratios, self.schedule, self.total_steps = forward, ratios, schedule, total_steps
        self.steps = total_steps

    def __call__(self, lr: float) -> float:
        self.snapshot.restore(self.model, self.optimizer)
        self.model.train()
        it, losses, first = cycle(self.batches), [], None
        for s in range(self.steps):
            mult = 1.0 if self.schedule is None else float(
                self.schedule(min(self.total_steps - 1, (s * self.total_steps) // self.steps)))
            for g, r in zip(self.optimizer.param_groups, self.ratios):
                g["lr"] = lr * r * mult
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.forward(self.model, next(it))
            value = float(loss.detach())
            first = value if first is None else first
            if not math.isfinite(value) or value > PROBE_DIVERGE * first + 1e-12:
                return math.inf
            loss.backward()
            self.optimizer.step()
            losses.append(value)
        tail = losses[-max(1, len(losses) // 4):]
        return float(sum(tail) / len(tail))
