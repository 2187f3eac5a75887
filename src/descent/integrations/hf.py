"""A transformers ``TrainerCallback`` that runs descent's Monitor, doctor and (optionally) LR finder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ._core import DoctorViews, RunDoctor, run_lr_finder

__all__ = ["DescentTrainerCallback"]


def _hf_forward(model: Any, batch: Any) -> Any:
    device = next(model.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in dict(batch).items()}
    out = model(**batch)
    return out["loss"] if isinstance(out, dict) else out[0] if isinstance(out, (tuple, list)) else out.loss


class DescentTrainerCallback(DoctorViews, TrainerCallback):
    """Monitor every optimizer step of a ``transformers.Trainer`` and run the doctor on the run.

    Per optimizer step (``on_optimizer_step``, gradients still present) a :class:`descent.Monitor`
    record: lr of every group, per-layer gradient norms, non-finite gradient counts, update
    ratio. At the Trainer's logging steps (``on_log``) the record gets the Trainer's ``loss``,
    ``grad_norm`` (before clipping; whether it exceeded ``max_grad_norm`` gives ``clipped``) and
    at evaluations ``eval_loss`` as ``val_loss``. Use ``logging_steps=1`` for a per-step loss.
    When the Trainer clips (``max_grad_norm > 0``) the Monitor's own norm, measured after the
    clipping, is kept as ``grad_norm_after_clip``. The Trainer's ``logging_nan_inf_filter``
    (default True) hides a NaN loss from its logs; the non-finite gradients are still seen here.

    The records go to ``<output_dir>/descent_monitor.jsonl`` (appended: a run resumed from a
    checkpoint continues it; the doctor counts a repeated step once). The doctor runs at the
    end (:attr:`findings`, also written to ``descent_monitor_doctor.json`` and logged) and at the
    first non-finite loss or gradient (:attr:`nonfinite_findings`; the training stops there with
    ``stop_on_nonfinite=True``). With ``lr_finder=True`` :func:`descent.find_lr` runs on the
    training batches before the first step (model and optimizer restored afterwards) and the
    result is in :attr:`lr_result`; ``lr_finder="apply"`` also sets the lr to its suggestion.

    Args:
        jsonl: where the records go (default ``<output_dir>/descent_monitor.jsonl``; ``False``: none).
        stop_on_nonfinite: stop training at the first non-finite loss or gradient.
        lr_finder: ``False``, ``True`` (report) or ``"apply"``.
        lr_finder_iters: iterations of the LR range test.
        **monitor_kwargs: for :class:`descent.Monitor` (``per_layer``, ``ratio_every``).

    Example:
        >>> from transformers import Trainer, TrainingArguments  # doctest: +SKIP
        >>> from descent.integrations import DescentTrainerCallback  # doctest: +SKIP
        >>> cb = DescentTrainerCallback()  # doctest: +SKIP
        >>> Trainer(model, TrainingArguments("out", logging_steps=1), train_dataset=ds,
        ...         callbacks=[cb]).train()  # doctest: +SKIP
        >>> cb.findings.codes  # doctest: +SKIP
        []
    """

    def __init__(self, jsonl: str | Path | bool | None = None, *, stop_on_nonfinite: bool = False,
                 lr_finder: bool | str = False, lr_finder_iters: int = 100, **monitor_kwargs: Any) -> None:
        if lr_finder not in (False, True, "apply"):
            raise ValueError(f"Invalid lr_finder: {lr_finder!r} (must be False, True or 'apply')")
        self._jsonl = jsonl
        self.stop_on_nonfinite = stop_on_nonfinite
        self.lr_finder = lr_finder
        self.lr_finder_iters = int(lr_finder_iters)
        self.monitor_kwargs = monitor_kwargs
        self.doctor: RunDoctor | None = None
        self.lr_result: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        path = None if self._jsonl is False else (self._jsonl or os.path.join(args.output_dir, "descent_monitor.jsonl"))
        self.doctor = RunDoctor(path, stop_on_nonfinite=self.stop_on_nonfinite, **self.monitor_kwargs)
        if state.is_world_process_zero:
            self.doctor.start()
        if self.lr_finder and state.global_step == 0 and kw.get("train_dataloader") is not None:
            self.lr_result = run_lr_finder(kw["model"], kw["optimizer"], kw["train_dataloader"], _hf_forward,
                                           total_steps=state.max_steps or None, num_iter=self.lr_finder_iters,
                                           apply=self.lr_finder == "apply", scheduler=kw.get("lr_scheduler"))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.doctor is None:
            return
        rec = self.doctor.record(state.global_step + 1, model=kw.get("model"), optimizer=kw.get("optimizer"))
        if args.max_grad_norm and args.max_grad_norm > 0 and "grad_norm" in rec:
            rec["grad_norm_after_clip"] = rec.pop("grad_norm")
        if self.doctor.nonfinite():
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if self.doctor is None or not logs or "train_runtime" in logs:
            return
        values: dict[str, Any] = {"loss": logs.get("loss"), "val_loss": logs.get("eval_loss")}
        norm = logs.get("grad_norm")
        if norm is not None:
            values["grad_norm"] = float(norm)
            if args.max_grad_norm and args.max_grad_norm > 0:
                values["clipped"] = float(norm) > args.max_grad_norm
        self.doctor.amend(**values)
        if self.doctor.nonfinite():
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.doctor is not None:
            self.doctor.finish()
