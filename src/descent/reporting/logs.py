"""Read training logs into columns: descent's JSONL, CSV (Lightning's ``CSVLogger``), HF
``trainer_state.json`` and TensorBoard event files.

Column names of other tools are mapped to descent's (:data:`ALIASES`): ``train_loss``,
``train/loss``, ``train_loss_step`` -> ``loss``; ``eval_loss``, ``eval/loss``, ``val_loss_epoch`` ->
``val_loss``; ``learning_rate``, ``lr-AdamW`` (any ``lr-*``) -> ``lr``; ``grad_2.0_norm_total`` ->
``grad_norm``; ``global_step`` -> ``step``. Rows sharing a step (a trainer logs its training and
validation values in separate rows; a killed and resumed run repeats steps) are merged into one,
the later value of a column winning. A last line cut short (a log being written) is left out, and
so is a line whose numeric column holds something that is not a number (it is *malformed*, not a
NaN loss); both are said in the result's :attr:`LogColumns.notes`. Non-finite floats are read from
the JSON tokens ``NaN``/``Infinity`` and from the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
(what :class:`descent.Monitor` writes).

Example:
    >>> from descent.reporting.logs import read_log
    >>> cols = read_log("run.jsonl")  # doctest: +SKIP
    >>> sorted(cols)[:2], cols.notes  # doctest: +SKIP
    (['grad_norm', 'loss'], [])
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["LogError", "LogColumns", "read_log", "ALIASES", "KNOWN"]

KNOWN = ("step", "loss", "val_loss", "grad_norm", "lr", "clipped", "nonfinite_grads", "skipped_steps")
_NUMERIC = ("step", "loss", "val_loss", "grad_norm", "lr", "nonfinite_grads", "skipped_steps")

#: Other tools' column names for descent's, in order of preference (``*`` ends a prefix).
ALIASES: dict[str, tuple[str, ...]] = {
    "step": ("step", "global_step"),
    "loss": ("loss", "train_loss_step", "train_loss", "train/loss", "training_loss", "train/train_loss",
             "loss_step"),
    "val_loss": ("val_loss", "val_loss_epoch", "eval_loss", "eval/loss", "val/loss", "valid_loss",
                 "validation_loss", "validation/loss"),
    "lr": ("lr", "learning_rate", "train/learning_rate", "train/lr", "lr-*"),
    "grad_norm": ("grad_norm", "train/grad_norm", "grad_2.0_norm_total", "gradient_norm"),
    "clipped": ("clipped",),
    "nonfinite_grads": ("nonfinite_grads",),
    "skipped_steps": ("skipped_steps",),
}
_NONFINITE = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "-infinity": -math.inf, "-inf": -math.inf}


class LogError(ValueError):
    """The log is missing, unreadable or has no usable loss column (a one-line message)."""


class LogColumns(dict):
    """Columns of a log (a dict of equal-length lists) with ``notes`` on what was left out and ``format``."""

    def __init__(self, columns: dict[str, list[Any]], notes: list[str], fmt: str) -> None:
        super().__init__(columns)
        self.notes = list(notes)
        self.format = fmt


def _value(v: Any) -> Any:
    """A log cell as None / bool / float, or the stripped string when it is none of these."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    if s == "":
        return None
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if s.lower() in _NONFINITE:
        return _NONFINITE[s.lower()]
    try:
        return float(s)
    except ValueError:
        return s


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, str) and not v.strip())


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
    """Map one raw record to descent's keys (the first alias with a value wins; empty cells are absent)."""
    out: dict[str, Any] = {}
    for key, names in ALIASES.items():
        for name in names:
            if name.endswith("*"):
                hit = next((k for k in row if k.startswith(name[:-1]) and _present(row[k])), None)
            else:
                hit = name if _present(row.get(name)) else None
            if hit is not None:
                out[key] = row[hit]
                break
    return out


def _records(path: Path, notes: list[str]) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """(line number, raw record) pairs of the file, and the format's name."""
    if "tfevents" in path.name:
        return _tensorboard(path), "tensorboard"
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv(path, notes), "csv"
    if path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and "log_history" in whole:
            return _hf_state(whole), "trainer_state"
        return _jsonl(text, path, notes), "jsonl"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl(path.read_text(encoding="utf-8"), path, notes), "jsonl"
    raise LogError(f"{path}: unknown log format (expected .jsonl, .csv, trainer_state.json or a TensorBoard "
                   "tfevents file)")


def _jsonl(text: str, path: Path, notes: list[str]) -> list[tuple[int, dict[str, Any]]]:
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows, bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:
                notes.append(f"the last line ({i + 1}) is incomplete (a log still being written?): "
                             f"read the {len(rows)} complete record(s) before it")
            else:
                bad.append(f"line {i + 1} is not JSON ({exc.msg})")
            continue
        if not isinstance(rec, dict):
            bad.append(f"line {i + 1} is not a JSON object")
            continue
        rows.append((i + 1, rec))
    if bad:
        notes.append(f"{len(bad)} malformed line(s) left out: " + "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else ""))
    return rows


def _csv(path: Path, notes: list[str]) -> list[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        text = f.read()
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    if not reader.fieldnames:
        raise LogError(f"{path}: empty CSV (no header)")
    width = len(reader.fieldnames)
    rows = [(i + 2, {k.strip(): v for k, v in row.items() if k is not None}) for i, row in enumerate(reader)]
    tail = text.splitlines()[-1] if rows and not text.endswith("\n") else ""
    if tail and len(next(csv.reader([tail], delimiter=delimiter))) < width:
        notes.append(f"the last line ({rows[-1][0]}) is incomplete (a log still being written?): "
                     f"read the {len(rows) - 1} complete row(s) before it")
        rows.pop()
    return rows


def _hf_state(state: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    history = state.get("log_history") or []
    # the run summary ({"train_runtime", "train_loss": mean over the run, ...}) is not a step's loss
    return [(i + 1, dict(r)) for i, r in enumerate(history) if isinstance(r, dict) and "train_runtime" not in r]


def _tensorboard(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise LogError(f"{path}: reading TensorBoard event files needs the tensorboard package "
                       "(pip install tensorboard), which is not installed") from None
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    by_step: dict[int, dict[str, Any]] = {}
    for tag in acc.Tags().get("scalars", []):
        for ev in acc.Scalars(tag):
            by_step.setdefault(ev.step, {"step": ev.step})[tag] = ev.value
    return [(0, by_step[s]) for s in sorted(by_step)]


def _rows(records: list[tuple[int, dict[str, Any]]], notes: list[str]) -> list[dict[str, Any]]:
    """Canonical rows, malformed ones left out (noted), merged by step (later values win)."""
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for line, raw in records:
        rec = {k: _value(v) for k, v in _canonical(raw).items()}
        wrong = [k for k in _NUMERIC if isinstance(rec.get(k), str)]
        if wrong:
            where = f"line {line}" if line else f"step {rec.get('step')}"
            bad.append(f"{where}: {wrong[0]}={rec[wrong[0]]!r} is not a number")
            continue
        if rec:
            rows.append(rec)
    if bad:
        notes.append(f"{len(bad)} malformed line(s) left out: " + "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else ""))
    if not any("step" in r for r in rows):
        return rows
    merged: dict[float, dict[str, Any]] = {}
    order: list[float] = []
    repeated = 0
    for i, r in enumerate(rows):
        key = r.get("step", math.nan)
        key = key if key == key else -1.0 - i  # rows without a step stay apart
        if key in merged:
            if "loss" in r and "loss" in merged[key]:
                repeated += 1
            merged[key].update(r)
        else:
            merged[key] = dict(r)
            order.append(key)
    if repeated:
        notes.append(f"{repeated} step(s) logged twice (a killed and resumed run?): each counted once, "
                     "the last value kept")
    return [merged[k] for k in sorted(order)] if all(k >= 0 for k in order) else [merged[k] for k in order]


def _find(directory: Path) -> Path:
    """The log inside a run folder: trainer_state.json, metrics.csv, event files or *.jsonl (newest)."""
    for pattern in ("trainer_state.json", "metrics.csv", "*tfevents*", "*.jsonl"):
        hits = sorted(directory.glob(pattern)) or sorted(directory.rglob(pattern))
        if hits:
            return max(hits, key=lambda p: p.stat().st_mtime)
    raise LogError(f"{directory}: a directory without a log (trainer_state.json, metrics.csv, "
                   "TensorBoard event files or *.jsonl)")


def read_log(path: str | Path) -> LogColumns:
    """Columns (``loss``, ``val_loss``, ``grad_norm``, ``lr``, ``clipped``, ``step``, ...) of a log file.

    The format is chosen by name: ``*.jsonl`` (one record per line, as :class:`descent.Monitor`
    and ``descent train`` write), ``*.json`` (HF ``trainer_state.json``, or JSON lines), ``*.csv``
    (header row; Lightning's ``CSVLogger``), ``*tfevents*`` (TensorBoard). A directory is searched
    for one of these (HF checkpoint folders, Lightning version folders). See the module docstring
    for the column names mapped and the lines left out.

    Raises:
        LogError: missing or unreadable file, unknown format, or no numeric ``loss`` column.
    """
    p = Path(path)
    if not p.exists():
        raise LogError(f"{p}: no such file")
    if p.is_dir():
        p = _find(p)
    notes: list[str] = []
    try:
        records, fmt = _records(p, notes)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LogError(f"{p}: cannot read ({exc})") from None
    rows = _rows(records, notes)
    cols = {k: [r.get(k) for r in rows] for k in KNOWN if any(k in r for r in rows)}
    if "loss" not in cols or not any(isinstance(v, float) for v in cols["loss"]):
        found = sorted({k for _, r in records for k in r})
        raise LogError(f"{p}: no numeric loss column (found: {', '.join(found[:20]) or 'nothing'}; "
                       f"names read as the loss: {', '.join(ALIASES['loss'])})" + (f"; {notes[0]}" if notes else ""))
    return LogColumns(cols, notes, fmt)
