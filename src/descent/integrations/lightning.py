"""A Lightning ``Callback`` that runs descent's Monitor, doctor and (optionally) LR finder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from descent.schedules import Schedule, Scheduler

from ._core import DoctorViews, RunDoctor, run_lr_finder

__all__ = ["DescentLightningCallback"]


def _loss_of(out: Any) -> Any:
    if isinstance(out, dict):
        return out.get("loss")
    return out


@contextlib.contextmanager
def _no_logging(module: Any) -> Iterator[None]:
    """Let ``training_step`` run outside the loop (its ``self.log`` calls become no-ops)."""
    module.log, module.log_dict = (lambda *a, **k: None), (lambda *a, **k: None)
    try:
        yield
    finally:
        del module.log, module.log_dict


def _has_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, Scheduler) and any(
        getattr(leaf, "stateful", False) for s in scheduler.schedules if isinstance(s, Schedule) for leaf in s.leaves())


class DescentLightningCallback(DoctorViews, pl.Callback):
    """Monitor every optimizer step of a Lightning ``fit``, feed descent's plateau schedules, run the doctor.

    Per optimizer step (``on_train_batch_end``, gradients still present) a :class:`descent.Monitor`
    record with the step's loss (``training_step``'s return value), every group's lr, per-layer
    gradient norms, non-finite counts and the update ratio; after each validation the metric
    ``monitor`` (default ``"val_loss"``) as ``val_loss``. That metric is also fed
    (:meth:`descent.schedules.Scheduler.report`) to every descent ``Scheduler`` holding a
    :class:`~descent.schedules.ReduceLROnPlateau` that Lightning does not feed itself (a
    scheduler config without ``reduce_on_plateau=True``), so a warmup + plateau schedule can be
    stepped per step (``"interval": "step"``) and still see every validation, once.

    The records go to ``<log_dir>/descent_monitor.jsonl`` (appended on resume). The doctor runs
    at the end (:attr:`findings`) and at the first non-finite loss or gradient
    (:attr:`nonfinite_findings`; ``stop_on_nonfinite=True`` stops the fit there). With
    ``lr_finder=True`` :func:`descent.find_lr` runs on the training batches through
    ``training_step`` before the first step (``self.log`` is muted meanwhile); ``"apply"`` also
    sets the lr to the suggestion.

    Args:
        jsonl: where the records go (default ``<trainer.log_dir>/descent_monitor.jsonl``; ``False``: none).
        monitor: the validation metric read as ``val_loss`` and fed to plateau schedules.
        stop_on_nonfinite: stop at the first non-finite loss or gradient.
        lr_finder: ``False``, ``True`` (report) or ``"apply"``.
        lr_finder_iters: iterations of the LR range test.
        **monitor_kwargs: for :class:`descent.Monitor`.

    Example:
        >>> import lightning  # doctest: +SKIP
        >>> cb = DescentLightningCallback()  # doctest: +SKIP
        >>> lightning.Trainer(max_steps=100, callbacks=[cb]).fit(module, loader)  # doctest: +SKIP
        >>> cb.findings.codes  # doctest: +SKIP
        []
    """

    def __init__(self, jsonl: str | Path | bool | None = None, *, monitor: str = "val_loss",
                 stop_on_nonfinite: bool = False, lr_finder: bool | str = False, lr_finder_iters: int = 100,
                 **monitor_kwargs: Any) -> None:
        if lr_finder not in (False, True, "apply"):
            raise ValueError(f"Invalid lr_finder: {lr_finder!r} (must be False, True or 'apply')")
        self._jsonl = jsonl
        self.metric = monitor
        self.stop_on_nonfinite = stop_on_nonfinite
        self.lr_finder = lr_finder
        self.lr_finder_iters = int(lr_finder_iters)
        self.monitor_kwargs = monitor_kwargs
        self.doctor: RunDoctor | None = None
        self.lr_result: Any = None
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        root = trainer.log_dir or trainer.default_root_dir
        path = None if self._jsonl is False else (self._jsonl or os.path.join(root, "descent_monitor.jsonl"))
        self.doctor = RunDoctor(path, stop_on_nonfinite=self.stop_on_nonfinite, **self.monitor_kwargs)
        self._last_step = trainer.global_step
        if trainer.is_global_zero:
            self.doctor.start()
        if self.lr_finder and trainer.global_step == 0:
            def forward(model: Any, batch: Any) -> torch.Tensor:
                batch = trainer.strategy.batch_to_device(batch)
                with _no_logging(pl_module):
                    return _loss_of(pl_module.training_step(batch, 0))

            configs = trainer.lr_scheduler_configs
            self.lr_result = run_lr_finder(
                pl_module, trainer.optimizers[0], trainer.train_dataloader, forward,
                total_steps=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None,
                num_iter=self.lr_finder_iters, apply=self.lr_finder == "apply",
                scheduler=configs[0].scheduler if configs else None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.doctor is None or trainer.global_step == self._last_step:
            return  # accumulating: no optimizer step yet
        self._last_step = trainer.global_step
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.doctor.record(trainer.global_step, loss=_loss_of(outputs), model=pl_module, optimizer=optimizer)
        if self.doctor.nonfinite():
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.doctor is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        self.doctor.amend(val_loss=value)
        for config in trainer.lr_scheduler_configs:
            if not config.reduce_on_plateau and _has_plateau(config.scheduler):
                config.scheduler.report(float(value))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.doctor is not None:
            self.doctor.finish()
