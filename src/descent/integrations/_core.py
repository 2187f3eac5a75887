"""What the trainer callbacks share: a Monitor whose JSONL line is written once the step is complete,
the doctor on a non-finite loss and at the end, and the LR finder before training."""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from descent.tools._findings import Findings
from descent.tools.doctor import diagnose
from descent.tools.monitor import Monitor, json_line

__all__ = ["DoctorViews", "RunDoctor", "run_lr_finder"]

log = logging.getLogger("descent.integrations")


class RunDoctor:
    """A :class:`descent.Monitor` driven by a trainer's hooks, with the doctor at the end.

    A trainer hands a step's values in pieces (gradients after the optimizer step, the loss
    and the validation loss later in its logging hooks), so a record is written to the JSONL
    file when the next one starts or at :meth:`finish`; :meth:`amend` completes the current one.

    Args:
        jsonl: the file the records go to (appended to: a resumed run continues it; the doctor
            counts a repeated step once), or ``None``.
        stop_on_nonfinite: ask the trainer to stop at the first non-finite loss or gradient.
        monitor_kwargs: passed to :class:`descent.Monitor` (``per_layer``, ``ratio_every``, ...).
    """

    def __init__(self, jsonl: str | Path | None = None, *, stop_on_nonfinite: bool = False,
                 **monitor_kwargs: Any) -> None:
        self.monitor = Monitor(**monitor_kwargs)
        self.jsonl = Path(jsonl) if jsonl is not None else None
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.findings: Findings | None = None
        self.nonfinite_findings: Findings | None = None
        self._pending: dict[str, Any] | None = None
        self._file: Any = None

    def start(self) -> None:
        """Open the JSONL file (append)."""
        if self.jsonl is not None and self._file is None:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.jsonl.open("a", encoding="utf-8")

    def record(self, step: int, **values: Any) -> dict[str, Any]:
        """Log one optimizer step (:meth:`descent.Monitor.log` keywords) and return its record."""
        self._flush()
        rec = self.monitor.log(step, **values)
        self._pending = rec
        return rec

    def amend(self, **values: Any) -> None:
        """Add values to the current step's record (``loss`` updates the loss EMA as :meth:`Monitor.log`)."""
        rec = self._pending
        if rec is None:
            return
        for key, value in values.items():
            if value is None:
                continue
            value = float(value.detach()) if isinstance(value, torch.Tensor) else value
            if key == "loss" and "loss" not in rec:
                self.monitor._log_loss(rec, float(value))
            else:
                rec[key] = value

    def nonfinite(self) -> bool:
        """Whether the current record has a non-finite loss or gradient (and the doctor ran on it).

        The first time, the doctor's findings so far are stored in :attr:`nonfinite_findings` and
        logged as warnings. Returns True when the trainer should stop (``stop_on_nonfinite``).
        """
        rec = self._pending or {}
        loss, norm = rec.get("loss"), rec.get("grad_norm")
        bad = (isinstance(loss, float) and not math.isfinite(loss)) or (rec.get("nonfinite_grads") or 0) > 0 or (
            isinstance(norm, float) and not math.isfinite(norm))
        if not bad:
            return False
        if self.nonfinite_findings is None:
            self.nonfinite_findings = diagnose(self.monitor)
            for f in self.nonfinite_findings:
                log.warning("descent doctor at step %s: %s", rec.get("step"), f)
        return self.stop_on_nonfinite

    def finish(self) -> Findings:
        """Write the last record, close the file, run the doctor and log its findings."""
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        self.findings = diagnose(self.monitor) if self.monitor.history else Findings(notes=["no step was logged"])
        for f in self.findings:
            log.warning("descent doctor: %s", f)
        if not self.findings:
            log.info("descent doctor: nothing wrong detected (%s)", "; ".join(self.findings.notes) or "all rules ran")
        if self.jsonl is not None:
            report = {"findings": [f.to_dict() for f in self.findings], "notes": self.findings.notes}
            self.jsonl.with_name(self.jsonl.stem + "_doctor.json").write_text(
                json.dumps(report, indent=1, default=str, allow_nan=False), encoding="utf-8")
        return self.findings

    def _flush(self) -> None:
        if self._pending is not None and self._file is not None:
            self._file.write(json_line(self._pending) + "\n")
            self._file.flush()
        self._pending = None


def run_lr_finder(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any],
                  forward: Callable[[nn.Module, Any], torch.Tensor], *, total_steps: int | None,
                  num_iter: int, apply: bool, scheduler: Any = None) -> Any:
    """Run :func:`descent.find_lr` on the trainer's batches; with ``apply``, scale every group's lr to it.

    The lr ratios between groups are kept; a scheduler's ``base_lrs`` are scaled with them so a
    schedule built before this call follows the new lr.
    """
    from descent.tools.lr_finder import find_lr

    kwargs: dict[str, Any] = {"forward": forward, "num_iter": num_iter}
    if total_steps and "total_steps" in inspect.signature(find_lr).parameters:
        kwargs["total_steps"] = total_steps  # a suggestion for a run of that length
    now = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:  # a warmup starting at 0: sweep from the groups' base lrs
        g["lr"] = g.get("initial_lr", g["lr"])
    try:
        result = find_lr(model, optimizer, batches, **kwargs)
        ref = next((float(g["lr"]) for g in optimizer.param_groups if float(g["lr"]) > 0), None)
    finally:
        for g, lr in zip(optimizer.param_groups, now):
            g["lr"] = lr
        if hasattr(scheduler, "_opt_steps_seen"):  # a descent Scheduler: the sweep's steps are not the run's
            scheduler._opt_steps_seen = scheduler._opt_steps
    log.info("descent LR finder: suggested lr %s (%s; the run's base lr is %s)", result.suggestion, result.method, ref)
    if apply and ref and result.suggestion and math.isfinite(result.suggestion):
        factor = float(result.suggestion) / ref
        for g in optimizer.param_groups:
            g["lr"] = float(g["lr"]) * factor
            if "initial_lr" in g:
                g["initial_lr"] = float(g["initial_lr"]) * factor
        if getattr(scheduler, "base_lrs", None) is not None:
            scheduler.base_lrs = [float(b) * factor for b in scheduler.base_lrs]
        if getattr(scheduler, "hyperparam", None) == "lr" and hasattr(scheduler, "base_values"):
            scheduler.base_values = [None if b is None else b * factor for b in scheduler.base_values]
    return result


class DoctorViews:
    """What both trainer callbacks show of their :class:`RunDoctor` (``None`` before training)."""

    doctor: RunDoctor | None

    @property
    def monitor(self) -> Any:
        """The :class:`descent.Monitor` of the current run."""
        return None if self.doctor is None else self.doctor.monitor

    @property
    def findings(self) -> Any:
        """The doctor's findings at the end of training."""
        return None if self.doctor is None else self.doctor.findings

    @property
    def nonfinite_findings(self) -> Any:
        """The doctor's findings at the first non-finite loss or gradient (``None`` if none)."""
        return None if self.doctor is None else self.doctor.nonfinite_findings
