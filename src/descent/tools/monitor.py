"""Per-step training telemetry: one call per step, JSONL out, columns in for the doctor."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Monitor", "read_clip", "json_line", "COLUMNS"]

#: The columnar history format shared by :class:`Monitor`, :func:`descent.diagnose` and the CLI.
#: Every column is a list aligned with ``step`` (``None`` = not recorded at that step).
COLUMNS = ("step", "loss", "loss_ema", "lr", "grad_norm", "clipped", "update_ratio",
           "nonfinite_grads", "skipped_steps", "step_time", "samples_per_s", "val_loss")


def read_clip(clip: Any) -> tuple[float | None, bool | None]:
    """Read ``(total_norm, clipped)`` from whatever a clipping call returned.

    Accepts a float / 0-d tensor (the norm, as ``torch.nn.utils.clip_grad_norm_`` returns), a
    ``(norm, clipped)`` pair, or an object with a ``total_norm`` (or ``norm``) and a ``clipped``
    attribute (descent's ``clip_grad_norm_`` result).
    """
    if clip is None:
        return None, None
    if isinstance(clip, (tuple, list)) and len(clip) == 2 and not hasattr(clip, "total_norm"):
        return _float(clip[0]), None if clip[1] is None else bool(clip[1])
    norm = getattr(clip, "total_norm", getattr(clip, "norm", None))
    if norm is not None and not callable(norm):
        fired = getattr(clip, "clipped", None)
        return _float(norm), None if fired is None else bool(fired)
    return _float(clip), None


def _float(x: Any) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


_NONFINITE_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _strict(value: Any) -> Any:
    """``value`` with non-finite floats as the strings "NaN", "Infinity", "-Infinity" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _unstrict(value: Any) -> Any:
    """Inverse of :func:`_strict`."""
    if isinstance(value, str):
        return _NONFINITE_TEXT.get(value, value)
    if isinstance(value, dict):
        return {k: _unstrict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unstrict(v) for v in value]
    return value


def json_line(rec: dict[str, Any]) -> str:
    """One record as a line of strict JSON (RFC 8259: no bare ``NaN``/``Infinity`` tokens).

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (not
    ``null``: in the columnar format ``null`` means *not recorded*, and a NaN loss must stay a
    NaN loss for the doctor). :func:`descent.reporting.logs.read_log` and
    :meth:`Monitor.from_jsonl` read them back as floats.

    Example:
        >>> json_line({"step": 3, "loss": float("nan")})
        '{"step": 3, "loss": "NaN"}'
    """
    return json.dumps(_strict(rec), default=str, allow_nan=False)


def _scalars(rec: dict[str, Any]) -> list[tuple[str, float]]:
    """The record as TensorBoard scalars: every number, per-group lrs, per-layer grad norms, flags as 0/1."""
    out: list[tuple[str, float]] = []
    for key, value in rec.items():
        if key == "step" or value is None:
            continue
        if isinstance(value, (bool, int, float)):
            out.append((key, float(value)))
        elif key == "lrs" and isinstance(value, (list, tuple)):
            out += [(f"lr/group_{i}", float(v)) for i, v in enumerate(value) if isinstance(v, (int, float))]
        elif key == "layer_grad_norm" and isinstance(value, dict):
            out += [(f"grad_norm/{name}", float(v)) for name, v in value.items() if isinstance(v, (int, float))]
        elif isinstance(value, dict):
            out += [(f"{key}/{k}", float(v)) for k, v in value.items()
                    if isinstance(v, (bool, int, float))]
    return out


class Monitor:
    """Record loss, lr, gradient norms, update ratios, clipping and non-finite counts each step.

    Call :meth:`log` once per step, after ``optimizer.step()`` and before ``zero_grad()`` (the
    gradients are read from ``model``). Per record:

    * ``loss`` and ``loss_ema``: :math:`a_t = \\beta a_{t-1} + (1-\\beta)\\ell_t`, reported bias-corrected
      :math:`a_t / (1-\\beta^n)` over the finite losses seen;
    * ``lr`` (first group) and ``lrs`` (every group);
    * ``grad_norm`` :math:`\\lVert g\\rVert_2` over all parameters and, with ``per_layer``,
      ``layer_grad_norm`` {parameter name: norm}; ``nonfinite_grads``: tensors whose grad is NaN/Inf;
    * ``update_ratio`` :math:`\\lVert\\theta_t-\\theta_{t-1}\\rVert / \\lVert\\theta_{t-1}\\rVert`
      every ``ratio_every`` steps (a snapshot of the weights is taken the step before);
    * ``clipped``/``clip_norm`` from ``clip=`` (see :func:`read_clip`), or ``grad_norm > clip_max_norm``;
    * ``skipped_steps`` summed over the groups of a descent optimizer with ``skip_nonfinite``;
    * ``step_time`` (s since the previous call) and ``samples_per_s`` when ``batch_size`` is given;
    * ``val_loss`` and any other keyword metric.

    Cost: one fused ``torch._foreach_norm`` over the grads and one host sync per step.

    Args:
        ema: the loss EMA coefficient :math:`\\beta`.
        per_layer: record per-parameter grad norms.
        ratio_every: steps between update-ratio measurements (0 disables).
        clip_max_norm: the clipping threshold, to infer ``clipped`` when ``clip`` gives only the norm.
        jsonl: stream every record to this file as one line of strict JSON (:func:`json_line`:
            non-finite floats as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``).
        tensorboard: a log directory for ``torch.utils.tensorboard`` (needs ``tensorboard``). Every
            number of the record is written, flags as 0/1, per-group lrs as ``lr/group_<i>`` and
            per-layer gradient norms as ``grad_norm/<parameter name>``.

    Example:
        >>> import torch, descent
        >>> model = torch.nn.Linear(3, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = descent.Monitor()
        >>> for step in range(3):
        ...     loss = model(torch.ones(4, 3)).pow(2).mean(); loss.backward(); opt.step()
        ...     rec = mon.log(step, loss=loss, model=model, optimizer=opt)
        ...     opt.zero_grad()
        >>> sorted(mon.columns())[:3], len(mon.history)
        (['clipped', 'grad_norm', 'layer_grad_norm'], 3)
    """

    def __init__(self, ema: float = 0.98, *, per_layer: bool = True, ratio_every: int = 10,
                 clip_max_norm: float | None = None, jsonl: str | Path | None = None,
                 tensorboard: str | Path | None = None) -> None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"Invalid ema: {ema} (must be in [0, 1))")
        if int(ratio_every) != ratio_every or ratio_every < 0:
            raise ValueError(f"Invalid ratio_every: {ratio_every} (must be an integer >= 0)")
        self.ema = ema
        self.per_layer = per_layer
        self.ratio_every = int(ratio_every)
        self.clip_max_norm = clip_max_norm
        self.history: list[dict[str, Any]] = []
        self._avg, self._n = 0.0, 0
        self._last_time: float | None = None
        self._names: list[str] | None = None
        self._snapshot: list[Tensor] | None = None
        self._file = open(jsonl, "a", encoding="utf-8") if jsonl is not None else None  # noqa: SIM115
        self._tb = self._open_tensorboard(tensorboard) if tensorboard is not None else None

    @staticmethod
    def _open_tensorboard(logdir: str | Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("Monitor(tensorboard=...) needs the tensorboard package") from exc
        return SummaryWriter(str(logdir))

    # ------------------------------------------------------------------ logging
    def log(self, step: int, loss: Any = None, model: nn.Module | None = None,
            optimizer: torch.optim.Optimizer | None = None, clip: Any = None, val_loss: Any = None,
            batch_size: int | None = None, **metrics: Any) -> dict[str, Any]:
        """Record one step and return the record (see the class docstring for its keys)."""
        now = time.perf_counter()
        rec: dict[str, Any] = {"step": int(step)}
        if loss is not None:
            self._log_loss(rec, _float(loss))
        if optimizer is not None:
            self._log_optimizer(rec, optimizer)
        if model is not None:
            self._log_grads(rec, model)
            self._log_update(rec, model, int(step))
        norm, fired = read_clip(clip)
        if norm is not None:
            rec["clip_norm"] = norm
            rec.setdefault("grad_norm", norm)
        seen = norm if norm is not None else rec.get("grad_norm")  # the norm before clipping, if given
        if fired is None and self.clip_max_norm is not None and seen is not None:
            fired = seen > self.clip_max_norm
        rec["clipped"] = fired
        if self._last_time is not None:
            rec["step_time"] = now - self._last_time
            if batch_size and rec["step_time"] > 0:
                rec["samples_per_s"] = batch_size / rec["step_time"]
        self._last_time = now
        if val_loss is not None:
            rec["val_loss"] = _float(val_loss)
        for key, value in metrics.items():
            rec[key] = _float(value) if isinstance(value, (Tensor, int, float)) else value
        self.history.append(rec)
        self._write(rec)
        return rec

    def _log_loss(self, rec: dict[str, Any], value: float) -> None:
        rec["loss"] = value
        rec["loss_nonfinite"] = not math.isfinite(value)
        if math.isfinite(value):
            self._n += 1
            self._avg = self.ema * self._avg + (1 - self.ema) * value
        rec["loss_ema"] = self._avg / (1 - self.ema ** self._n) if self._n else None

    @staticmethod
    def _log_optimizer(rec: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        lrs = [_float(g["lr"]) for g in optimizer.param_groups]
        rec["lr"], rec["lrs"] = lrs[0], lrs
        skipped = [g["skipped_steps"] for g in optimizer.param_groups if "skipped_steps" in g]
        if skipped:
            rec["skipped_steps"] = int(max(skipped))

    def _log_grads(self, rec: dict[str, Any], model: nn.Module) -> None:
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        if not named:
            return
        grads = [g.detach() for _, g in named]
        norms = torch._foreach_norm(grads)
        stacked = torch.stack([n.to(torch.float32).cpu() for n in norms]) if len(
            {n.device for n in norms}) > 1 else torch.stack(norms).float()
        total = stacked.norm()
        values = torch.cat([total.reshape(1), stacked]).tolist()
        rec["grad_norm"] = values[0]
        per = values[1:]
        rec["nonfinite_grads"] = sum(1 for v in per if not math.isfinite(v))
        if self.per_layer:
            rec["layer_grad_norm"] = {n: v for (n, _), v in zip(named, per)}

    def _log_update(self, rec: dict[str, Any], model: nn.Module, step: int) -> None:
        if not self.ratio_every:
            return
        params = [p.detach() for p in model.parameters() if p.requires_grad]
        if self._snapshot is not None and len(self._snapshot) == len(params):
            diff = torch._foreach_sub(params, self._snapshot)
            num = torch.stack(torch._foreach_norm(diff)).norm()
            den = torch.stack(torch._foreach_norm(self._snapshot)).norm()
            rec["update_ratio"] = float(num / den) if float(den) > 0 else None
        self._snapshot = None
        if (step + 1) % self.ratio_every == 0:
            self._snapshot = [p.clone() for p in params]

    def _write(self, rec: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json_line(rec) + "\n")
            self._file.flush()
        if self._tb is not None:
            for tag, value in _scalars(rec):
                self._tb.add_scalar(tag, value, rec["step"])

    # ------------------------------------------------------------------ hooks
    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module | None = None, **log_kwargs: Any) -> Any:
        """Log automatically after every ``optimizer.step()`` (a step post-hook).

        The loss is whatever :meth:`observe` received since the previous step. Returns the hook
        handle (``handle.remove()`` detaches).
        """
        self._pending: dict[str, Any] = {}

        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            pending, self._pending = self._pending, {}
            self.log(len(self.history), model=model, optimizer=opt, **log_kwargs, **pending)

        return optimizer.register_step_post_hook(hook)

    def observe(self, **values: Any) -> None:
        """Give values (``loss=...``, ``clip=...``) for the next hooked step (see :meth:`attach`)."""
        if not hasattr(self, "_pending"):
            raise RuntimeError("Monitor.observe needs Monitor.attach(optimizer) first")
        self._pending.update(values)

    # ------------------------------------------------------------------ access
    def columns(self, keys: Iterable[str] | None = None) -> dict[str, list[Any]]:
        """The history as columns aligned with ``step`` (``None`` where a key was not recorded)."""
        wanted = list(keys) if keys is not None else sorted({k for r in self.history for k in r})
        return {k: [r.get(k) for r in self.history] for k in wanted}

    def to_jsonl(self, path: str | Path) -> None:
        """Write the whole history to ``path``, one JSON object per line."""
        with open(path, "w", encoding="utf-8") as fh:
            for rec in self.history:
                fh.write(json_line(rec) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Monitor:
        """A Monitor whose history is read back from a JSONL file (non-finite floats survive)."""
        mon = cls()
        with open(path, encoding="utf-8") as fh:
            mon.history = [_unstrict(json.loads(line)) for line in fh if line.strip()]
        return mon

    def close(self) -> None:
        """Close the JSONL file and TensorBoard writer."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __len__(self) -> int:
        return len(self.history)
