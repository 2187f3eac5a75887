"""The training doctor: rules over a run's history that name what went wrong and the first fix.

History format (the *columnar format*, shared with :class:`descent.Monitor` and the CLI): a dict of
equal-length lists aligned with ``step`` (``None`` or NaN = not recorded at that row)::

    {"step": [...], "loss": [...], "val_loss": [...], "grad_norm": [...], "lr": [...],
     "clipped": [...], "nonfinite_grads": [...], "skipped_steps": [...]}

Only ``loss`` is required (``step`` defaults to ``0..n-1``). ``val_loss`` may instead be shorter
than ``loss`` when ``val_step`` gives the step of each value. A :class:`descent.Monitor`, its
``history`` (a list of per-step dicts) or such a dict are all accepted. A repeated step (a run
killed and resumed) counts once, with its last row.

A rule is one function registered with :func:`rule`: it reads the typed view
:class:`~descent.tools._history.History` and the :class:`~descent.tools._history.Thresholds`,
may append a note (why it could not run) and returns a :class:`Finding` or ``None``::

    @rule("my_code")
    def _my_rule(h: History, t: Thresholds, notes: list[str]) -> Finding | None: ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ._findings import Finding, Findings
from ._history import History, Thresholds

__all__ = ["diagnose", "as_columns", "rule", "RULES", "CODES", "History", "Thresholds"]

RuleFn = Callable[[History, Thresholds, "list[str]"], "Finding | None"]
_SRC_TABLE = "001 (SGD tutorial): failure pattern -> first fix; symptom -> cause table"


@dataclass(frozen=True)
class Rule:
    """A registered doctor rule: its code, its function and the codes that make it moot."""

    code: str
    fn: RuleFn
    unless: tuple[str, ...] = ()


#: The registered rules, in the order they run (see :func:`rule`).
RULES: dict[str, Rule] = {}


def rule(code: str, *, unless: tuple[str, ...] = ()) -> Callable[[RuleFn], RuleFn]:
    """Register a doctor rule under ``code`` (a stable identifier); it runs after those registered before.

    Args:
        code: the code of the findings the rule returns.
        unless: codes which, when found earlier in the run, make this rule moot (it is then
            skipped with a note): e.g. a plateau after an early divergence.

    Example:
        >>> from descent.tools.doctor import RULES, rule
        >>> @rule("demo_rule")
        ... def _demo(h, t, notes):
        ...     return None
        >>> "demo_rule" in RULES
        True
        >>> del RULES["demo_rule"]
    """
    if not code or not isinstance(code, str):
        raise ValueError(f"Invalid rule code: {code!r} (must be a non-empty string)")

    def register(fn: RuleFn) -> RuleFn:
        if code in RULES and RULES[code].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"Invalid rule code: {code!r} is already registered to {RULES[code].fn.__qualname__}")
        RULES[code] = Rule(code, fn, tuple(unless))
        return fn

    return register


def as_columns(history: Any) -> History:
    """The typed view (:class:`History`) of a Monitor, a list of records or a dict of columns."""
    return History.from_any(history)


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Rolling median (trailing window of ``k``), robust to single spikes."""
    k = max(1, min(k, len(x)))
    return np.array([np.median(x[max(0, i - k + 1): i + 1]) for i in range(len(x))])


def _f(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else float(x)


def diagnose(history: Any, **thresholds: Any) -> Findings:
    """Run every registered rule over a training history and return the findings (see :data:`CODES`).

    Rules (thresholds are keyword arguments, the fields of :class:`Thresholds`):

    * ``nonfinite``: a NaN/Inf loss or gradient, or skipped optimizer steps.
    * ``early_divergence``: within the first ``early_steps`` (300) steps the smoothed loss (rolling
      median of 9) rises above :math:`\\max(f\\,m_t,\\ m_t + \\tfrac34(s_0 - m_t))` with :math:`m_t` its
      minimum so far, :math:`s_0` its start and :math:`f` = ``divergence_factor`` (2), or turns non-finite
      within its first 10 finite values or right after a loss above :math:`1.25\\,m_t` (a NaN after a
      steady descent, e.g. one bad batch, is left to ``nonfinite``).
    * ``oscillation``: in the second half, the robust spread (1.4826 MAD) of the loss around its
      rolling median (15) is more than ``oscillation_tol`` (0.08) of the starting loss (median of the
      first 5) and more than half the loss level (median of the second half).
    * ``plateau``: the loss at the end (median of the last 10 %) is less than ``plateau_tol`` (0.1)
      below the loss at the start.
    * ``overfitting``: the validation loss has not improved since its best (which is not in the
      last quarter of the evaluations) and ends above it by more than ``overfit_tol`` (0.05) times the
      larger of the best value and the improvement from the first evaluation to the best, while the
      training loss (rolling median over 10 % of the run) fell by more than 20 % since that point.
    * ``clip_saturation``: clipping fired on more than ``clip_fraction`` (0.5) of the recorded steps.
    * ``schedule_per_epoch``: the lr changes in equal stairs of ``k >= 2`` steps with small
      relative changes (a smooth schedule stepped once per epoch), or a descent ``Scheduler``
      reported the cadence.

    Args:
        history: a :class:`descent.Monitor`, its ``history``, a dict of columns (module docstring)
            or what :func:`descent.reporting.logs.read_log` returns (its notes are kept).
        **thresholds: overrides of :class:`Thresholds` (e.g. ``early_steps=100``).

    Returns:
        :class:`Findings` (a list); its ``notes`` say which rules could not run and why, and what
        was left out of the history (repeated steps, malformed or partial log lines).

    Example:
        >>> import descent
        >>> found = descent.diagnose({"loss": [2.3] * 100, "lr": [1e-6] * 100})
        >>> found.codes
        ['plateau']
    """
    known = {f.name for f in fields(Thresholds)}
    bad = sorted(set(thresholds) - known)
    if bad:
        raise TypeError(f"Invalid threshold: {', '.join(bad)} (known: {', '.join(sorted(known))})")
    t = Thresholds(**thresholds)
    h = History.from_any(history)
    found = Findings(notes=list(h.notes))
    notes = found.notes
    if not h.loss_recorded.any():
        notes.append("the history has no loss values: no rule could run")
        return found
    if not np.isfinite(h.loss).any():
        notes.append("no loss value is finite: only the nonfinite rule could run")
    for r in RULES.values():
        moot = [c for c in r.unless if c in found.codes]
        if moot:
            notes.append(f"{r.code} not checked: the run has {moot[0]} (fix that first)")
            continue
        item = r.fn(h, t, notes)
        if item is not None:
            found.append(item)
    return found


@rule("nonfinite")
def _nonfinite(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    rec = h.loss_recorded
    bad_loss = np.nonzero(rec & ~np.isfinite(h.loss))[0]
    g = h.grad_norm
    bad_grad = np.nonzero(~np.isnan(g) & ~np.isfinite(g) | (np.nan_to_num(h.nonfinite_grads) > 0))[0]
    skipped = np.nan_to_num(h.skipped_steps)
    rows = np.union1d(bad_loss, bad_grad)
    if len(rows) == 0 and skipped.max(initial=0) == 0:
        return None
    steps = h.step[rows].astype(int).tolist()
    ev = {"first_step": steps[0] if steps else None, "nonfinite_loss_steps": h.step[bad_loss].astype(int).tolist()[:20],
          "nonfinite_grad_steps": h.step[bad_grad].astype(int).tolist()[:20], "count": len(rows),
          "skipped_steps": int(skipped.max(initial=0))}
    return Finding("nonfinite", "error",
                   f"non-finite loss or gradients at {len(rows)} step(s), first at step {ev['first_step']}", ev,
                   "clip gradients (max_norm=1.0) for now and trace the cause with descent.trace_nan "
                   "(log(0), division by zero, lr too high)", _SRC_TABLE + "; 003 debug_nan_loss")


@rule("early_divergence")
def _early_divergence(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    steps, loss = h.step, h.loss
    window = steps < steps[0] + t.early_steps
    fin = np.isfinite(loss) & window & h.loss_recorded
    rows = np.nonzero(fin)[0]
    if len(rows) < 5:
        return None
    sm = _smooth(loss[rows], 9)
    run_min = np.minimum.accumulate(sm)
    limit = np.maximum(t.divergence_factor * run_min, run_min + 0.75 * (sm[0] - run_min))
    over = np.nonzero(sm > limit)[0]
    bad = np.nonzero(window & h.loss_recorded & ~np.isfinite(loss))[0]
    if len(over) == 0 and (len(bad) == 0 or bad[0] < rows[0]):
        return None
    if len(over) == 0:  # a non-finite loss: divergence if it comes at once or after a rise, else a bad batch
        k = int(np.searchsorted(rows, bad[0]))
        if k >= 10 and not loss[rows[k - 1]] > 1.25 * run_min[k - 1]:
            notes.append(f"the loss turned non-finite at step {int(steps[bad[0]])} after a steady descent: "
                         "early_divergence not reported (see nonfinite)")
            return None
    if len(over):
        i = int(over[0])
        at, value = int(steps[rows[i]]), _f(sm[i])
    else:
        at, value = int(steps[bad[0]]), _f(loss[bad[0]])
    j = int(np.argmin(sm[: max(1, over[0] if len(over) else len(sm))]))
    ev = {"step": at, "value": value, "min_step": int(steps[rows[j]]), "min_value": _f(sm[j]),
          "start_value": _f(sm[0]), "window_steps": t.early_steps}
    return Finding("early_divergence", "error",
                   f"the loss blew up early: {ev['value']} at step {at} after a minimum of {ev['min_value']} "
                   f"at step {ev['min_step']}", ev,
                   "divide the lr by 10 and add a warmup (e.g. 2-5 % of the steps)", _SRC_TABLE)


@rule("oscillation")
def _oscillation(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    rows = np.nonzero(np.isfinite(h.loss))[0]
    if len(rows) < 40:
        notes.append("fewer than 40 finite losses: oscillation not checked")
        return None
    loss = h.loss[rows]
    start = float(np.median(loss[:5]))
    half = loss[len(loss) // 2:]
    trend = _smooth(half, 15)
    spread = float(np.median(np.abs(half - trend))) * 1.4826  # robust std (MAD)
    level = float(np.median(half))
    if not start > 0 or spread <= t.oscillation_tol * start or spread <= 0.5 * level:
        return None
    ev = {"spread": _f(spread), "start_value": _f(start), "ratio": _f(spread / start),
          "from_step": int(h.step[rows[len(loss) // 2]]), "min": _f(float(half.min())), "max": _f(float(half.max()))}
    return Finding("oscillation", "warning",
                   f"the loss swings by about {ev['ratio']:.0%} of its starting value in the second half", ev,
                   "lower the momentum (0.9 -> 0.85) or the lr, or use a bigger batch", _SRC_TABLE)


@rule("plateau", unless=("early_divergence",))
def _plateau(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    rows = np.nonzero(np.isfinite(h.loss))[0]
    if len(rows) < 20:
        notes.append("fewer than 20 finite losses: plateau not checked")
        return None
    loss = h.loss[rows]
    k = max(3, len(loss) // 10)
    start, end = float(np.median(loss[:k])), float(np.median(loss[-k:]))
    if not start > 0 or (start - end) >= t.plateau_tol * start or end > start * 1.5:
        return None
    lr = h.lr[np.isfinite(h.lr)]
    constant = len(lr) > 0 and float(lr.max()) == float(lr.min())
    ev = {"start_value": _f(start), "end_value": _f(end), "improvement": _f((start - end) / start),
          "steps": [int(h.step[rows[0]]), int(h.step[rows[-1]])],
          "lr": None if len(lr) == 0 else _f(float(lr[-1])), "constant_lr": constant}
    fix = "raise the base lr (try 10x, or run descent.find_lr)"
    fix += " and add a schedule (warmup + cosine)" if constant else "; check the schedule"
    return Finding("plateau", "warning",
                   f"the loss barely moved: {ev['start_value']} -> {ev['end_value']} "
                   f"({ev['improvement']:.1%}) over {len(rows)} steps", ev, fix, _SRC_TABLE)


@rule("overfitting", unless=("early_divergence",))
def _overfitting(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    vs, vl = h.val_step, h.val_loss
    ok = np.isfinite(vl)
    vs, vl = vs[ok], vl[ok]
    if len(vl) < 4:
        notes.append("fewer than 4 finite validation losses: overfitting not checked")
        return None
    j = int(np.argmin(vl))
    scale = max(abs(vl[j]), vl[0] - vl[j])  # a rise small next to the best or to the progress made is noise
    if j >= 0.75 * (len(vl) - 1) or vl[-1] <= vl[j] + t.overfit_tol * scale:
        return None
    rows = np.nonzero(np.isfinite(h.loss))[0]
    steps, loss = h.step[rows], _smooth(h.loss[rows], max(9, len(rows) // 10))  # mini-batch noise
    at_best = loss[int(np.searchsorted(steps, vs[j], side="right")) - 1] if len(rows) else math.nan
    end = loss[-1] if len(rows) else math.nan
    if not (at_best > 0 and end < 0.8 * at_best):
        return None
    ev = {"best_val_step": int(vs[j]), "best_val_loss": _f(vl[j]), "last_val_step": int(vs[-1]),
          "last_val_loss": _f(vl[-1]), "train_loss_at_best": _f(at_best), "train_loss_end": _f(end)}
    return Finding("overfitting", "warning",
                   f"validation loss rose from {ev['best_val_loss']} (step {ev['best_val_step']}) to "
                   f"{ev['last_val_loss']} while the training loss kept falling "
                   f"({ev['train_loss_at_best']} -> {ev['train_loss_end']})", ev,
                   "add weight decay / augmentation, or stop early (descent.EarlyStopping restores the best weights)",
                   _SRC_TABLE)


@rule("clip_saturation")
def _clip_saturation(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    clipped = h.clipped
    known = ~np.isnan(clipped)
    if known.sum() < 10:
        return None
    frac = float(clipped[known].mean())
    if frac <= t.clip_fraction:
        return None
    g = h.grad_norm[known & np.isfinite(h.grad_norm)]
    ev = {"fraction": _f(frac), "recorded_steps": int(known.sum()),
          "median_grad_norm": None if len(g) == 0 else _f(float(np.median(g)))}
    return Finding("clip_saturation", "warning",
                   f"gradient clipping fired on {frac:.0%} of {ev['recorded_steps']} steps", ev,
                   "raise max_norm to about the median grad norm, or lower the lr: clipping on every step "
                   "is a hidden lr cut", "002 (Optimization in AI): validation -- plot train loss with grad norm")


@rule("schedule_per_epoch")
def _schedule_per_epoch(h: History, t: Thresholds, notes: list[str]) -> Finding | None:
    src = "002 (Optimization in AI): anti-pattern 'LR schedule stepped per epoch, not per step'"
    fix = "call scheduler.step() after every optimizer.step(), or give the schedule's length in epochs"
    if h.cadence:
        return Finding("schedule_per_epoch", "warning", str(h.cadence[0].get("message", h.cadence[0])),
                       {"cadence": h.cadence[0]}, fix, src)
    lr, steps = h.lr, h.step
    ok = np.isfinite(lr)
    lr, steps = lr[ok], steps[ok]
    if len(lr) < 20:
        return None
    change = np.nonzero(np.abs(np.diff(lr)) > 1e-12 * np.maximum(np.abs(lr[1:]), 1e-300))[0] + 1
    if len(change) < 3:
        return None
    gaps = np.diff(steps[change])
    k = float(np.median(gaps))
    rel = np.abs(lr[change] - lr[change - 1]) / np.maximum(np.abs(lr[change - 1]), 1e-300)
    if k < 2 or np.mean(gaps == k) < 0.8 or float(np.median(rel)) >= 0.5:
        return None
    rising = bool((lr[change] > lr[change - 1]).any())
    ev = {"interval_steps": int(k), "change_steps": steps[change].astype(int).tolist()[:10],
          "changes": len(change), "warmup_stepped_per_epoch": rising}
    msg = (f"the lr changes only every {int(k)} steps in small stairs: a smooth schedule stepped once per epoch"
           + (" (its warmup too)" if rising else ""))
    return Finding("schedule_per_epoch", "warning" if rising else "info", msg, ev,
                   fix + ("" if rising else " (ignore if per-epoch decay is intended)"), src)


#: Stable codes of the doctor's rules, in the order they run.
CODES = tuple(RULES)
