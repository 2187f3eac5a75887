"""Crash-safe checkpoints for your own training loop: atomic writes, the last K kept, exact resume.

:func:`save` writes ``DIR/ckpt-00000100.pt`` (the step, zero-padded) through a temporary file
that is fsynced and renamed, so a ``kill -9`` at any moment leaves either the old set of
checkpoints or the old set plus the new one, never a half-written file under a final name;
only then are checkpoints beyond the newest ``keep`` deleted. :func:`load` reads the newest
one with ``torch.load(weights_only=True)`` (no arbitrary code runs from a checkpoint file);
if it cannot be read (cut short, overwritten with junk) it warns and falls back to the one
before, and if none can be read it raises :class:`CheckpointError` naming the files.

What is saved: the ``state_dict`` of the model, optimizer, scheduler and gradient scaler
given, a :class:`descent.Monitor`'s history and loss average, the random number generators
(torch CPU and every CUDA device, NumPy's global generator, Python's ``random``) and any
``extra`` data made of tensors and plain Python values. Restoring all of it makes the rest of
a run bit-identical to an uninterrupted one when the data order is a function of the step
or of the restored generators.

Example:
    >>> import tempfile, torch, descent
    >>> model = torch.nn.Linear(4, 2); opt = descent.AdamW(model.parameters(), lr=1e-3)
    >>> d = tempfile.mkdtemp()
    >>> for step in range(3):
    ...     model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
    ...     _ = descent.checkpoint.save(d, model=model, optimizer=opt, step=step + 1, keep=2)
    >>> [p.name for p in descent.checkpoint.list_checkpoints(d)]
    ['ckpt-00000002.pt', 'ckpt-00000003.pt']
    >>> descent.checkpoint.load(d, model=model, optimizer=opt).step
    3
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("descent.checkpoint")

__all__ = ["save", "load", "latest", "list_checkpoints", "Checkpoint", "CheckpointError"]

_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")
_FORMAT = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint: missing, unreadable, or saved from a different model/optimizer."""


@dataclass
class Checkpoint:
    """What :func:`load` restored.

    Attributes:
        step: the step given to :func:`save`.
        path: the file that was loaded.
        extra: the ``extra`` dict given to :func:`save` (``{}`` if none).
        skipped: newer files that could not be read and were passed over.
    """

    step: int
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory``, oldest step first (``[]`` if there are none)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint file in ``directory``, or ``None``."""
    files = list_checkpoints(directory)
    return files[-1] if files else None


# ----------------------------------------------------------------------------- RNG
def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def _python_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    py = state.get("python")
    if py is not None:
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state.get("numpy")
    if npst is not None:
        import numpy as np

        np.random.set_state((npst["kind"], npst["keys"].numpy().astype("uint32"), npst["pos"],
                             npst["has_gauss"], npst["cached_gaussian"]))


# ------------------------------------------------------------------------- monitor
_MONITOR_ATTRS = ("history", "_avg", "_n", "_snapshot")


def _monitor_state(monitor: Any) -> dict[str, Any]:
    if hasattr(monitor, "state_dict"):
        return monitor.state_dict()
    return {k: getattr(monitor, k) for k in _MONITOR_ATTRS if hasattr(monitor, k)}


def _load_monitor(monitor: Any, state: dict[str, Any]) -> None:
    if hasattr(monitor, "load_state_dict"):
        monitor.load_state_dict(state)
        return
    for k, v in state.items():
        setattr(monitor, k, list(v) if k == "history" else v)


# ---------------------------------------------------------------------------- save
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save(directory: str | Path, *, step: int, model: torch.nn.Module | None = None,
         optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
         monitor: Any = None, rng: bool = True, extra: dict[str, Any] | None = None, keep: int = 3) -> Path:
    """Write one checkpoint atomically into ``directory`` and keep only the newest ``keep``.

    Args:
        directory: the checkpoint folder (created if missing).
        step: the number of completed steps; names the file and is returned by :func:`load`.
        model, optimizer, scheduler, scaler: anything with ``state_dict()``; ``None`` to skip.
        monitor: a :class:`descent.Monitor` (its history and loss average).
        rng: save the torch (CPU and CUDA), NumPy and Python random generators.
        extra: more data to store (tensors and plain Python values only).
        keep: how many checkpoints to keep (>= 1); older ones are deleted after the new one is safe.

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: a negative ``step`` or ``keep < 1``.
        OSError: the directory cannot be written (nothing older is deleted then).
    """
    if int(step) != step or step < 0:
        raise ValueError(f"Invalid step: {step!r} (must be an integer >= 0)")
    if int(keep) != keep or keep < 1:
        raise ValueError(f"Invalid keep: {keep!r} (must be an integer >= 1)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": _FORMAT, "step": int(step), "extra": dict(extra or {})}
    for name, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None:
            payload[name] = obj.state_dict()
    if monitor is not None:
        payload["monitor"] = _monitor_state(monitor)
    if rng:
        payload["rng"] = _rng_state()
    path = d / f"ckpt-{int(step):08d}.pt"
    _atomic_save(payload, path)
    for old in list_checkpoints(d)[:-int(keep)]:
        old.unlink(missing_ok=True)
    log.debug("saved %s", path)
    return path


# ---------------------------------------------------------------------------- load
def _read(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, a pickle with code in it, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {reason[:200]}") from None
    if not isinstance(state, dict) or "step" not in state or state.get("format") != _FORMAT:
        raise CheckpointError(f"cannot read checkpoint {path}: not a descent.checkpoint file")
    return state


def _restore(what: str, obj: Any, state: dict[str, Any], path: Path) -> None:
    if what not in state:
        raise CheckpointError(f"checkpoint {path} has no {what} state to load")
    try:
        obj.load_state_dict(state[what])
    except Exception as exc:
        msg = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint {path} does not match this {what} ({type(obj).__name__}): "
                              f"{msg[:300]}") from None


def load(directory_or_file: str | Path, *, model: torch.nn.Module | None = None,
         optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
         monitor: Any = None, rng: bool = True, map_location: Any = "cpu") -> Checkpoint:
    """Restore the newest readable checkpoint of a directory (or one given file) into the objects given.

    A newest file that cannot be read is skipped with a :class:`UserWarning` and the one
    before it is used. Loading is ``weights_only``: only tensors and plain Python values.

    Args:
        directory_or_file: a folder written by :func:`save`, or one checkpoint file.
        model, optimizer, scheduler, scaler, monitor: objects to restore (``None`` to skip).
        rng: restore the random generators saved with the checkpoint.
        map_location: as in :func:`torch.load` (``"cpu"`` by default).

    Returns:
        A :class:`Checkpoint` with the step, the path used and the ``extra`` data.

    Raises:
        CheckpointError: no checkpoint, none readable, or one saved from a different model or
            optimizer (the message names the file and what did not match).
    """
    src = Path(directory_or_file)
    files = [src] if src.is_file() else list_checkpoints(src)
    if not files:
        raise CheckpointError(f"no checkpoint in {src} (expected files named ckpt-<step>.pt)")
    errors: list[str] = []
    skipped: list[Path] = []
    for path in reversed(files):
        try:
            state = _read(path, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            skipped.append(path)
            continue
        if skipped:
            warnings.warn(f"{'; '.join(errors)}; using the previous checkpoint {path} (step {state['step']})",
                          UserWarning, stacklevel=2)
        for what, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler),
                          ("scaler", scaler)):
            if obj is not None:
                _restore(what, obj, state, path)
        if monitor is not None and "monitor" in state:
            _load_monitor(monitor, state["monitor"])
        if rng and "rng" in state:
            _set_rng_state(state["rng"])
        return Checkpoint(int(state["step"]), path, dict(state.get("extra") or {}), skipped)
    raise CheckpointError(errors[0] if len(errors) == 1 else
                          f"no readable checkpoint in {src}: " + "; ".join(errors))
