"""Read training logs into columns: descent's JSONL, CSV, and TensorBoard event files.

Example:
    >>> from descent.reporting.logs import read_log
    >>> cols = read_log("run.jsonl")  # doctest: +SKIP
    >>> sorted(cols)[:2]  # doctest: +SKIP
    ['grad_norm', 'loss']
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["LogError", "read_log"]

KNOWN = ("step", "loss", "val_loss", "grad_norm", "lr", "clipped", "nonfinite_grads", "skipped_steps")


class LogError(ValueError):
    """The log is missing, unreadable or has no usable loss column (a one-line message)."""


def _num(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float)):
        return v
    s = str(v).strip()
    if s == "":
        return None
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    try:
        return float(s)
    except ValueError:
        return s


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = [k for k in KNOWN if any(k in r for r in rows)]
    return {k: [r.get(k) for r in rows] for k in keys}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogError(f"{path}: line {i} is not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise LogError(f"{path}: line {i} is not a JSON object")
        rows.append(rec)
    return rows


def _csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise LogError(f"{path}: empty CSV (no header)")
        return [{k.strip(): _num(v) for k, v in row.items() if k is not None} for row in reader]


def _tensorboard(path: Path) -> list[dict[str, Any]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise LogError(f"{path}: reading TensorBoard event files needs the tensorboard package "
                       "(pip install tensorboard), which is not installed") from None
    acc = EventAccumulator(str(path))
    acc.Reload()
    by_step: dict[int, dict[str, Any]] = {}
    for tag in acc.Tags().get("scalars", []):
        key = tag.split("/")[-1]
        for ev in acc.Scalars(tag):
            by_step.setdefault(ev.step, {"step": ev.step})[key] = ev.value
    return [by_step[s] for s in sorted(by_step)]


def read_log(path: str | Path) -> dict[str, list[Any]]:
    """Columns (``loss``, ``val_loss``, ``grad_norm``, ``lr``, ``clipped``, ``step``, ...) of a log file.

    The format is chosen by name: ``*.jsonl``/``*.json`` (one record per line, as
    :class:`descent.Monitor` writes), ``*.csv`` (header row), ``*tfevents*`` (TensorBoard).

    Raises:
        LogError: missing or unreadable file, unknown format, or no ``loss`` column.
    """
    p = Path(path)
    if not p.exists():
        raise LogError(f"{p}: no such file")
    if p.is_dir():
        events = sorted(p.glob("*tfevents*"))
        if not events:
            raise LogError(f"{p}: a directory without TensorBoard event files")
        p = events[-1]
    try:
        if "tfevents" in p.name:
            rows = _tensorboard(p)
        elif p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            rows = _jsonl(p)
        elif p.suffix.lower() in (".csv", ".tsv"):
            rows = _csv(p)
        else:
            raise LogError(f"{p}: unknown log format (expected .jsonl, .csv or a TensorBoard tfevents file)")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LogError(f"{p}: cannot read ({exc})") from None
    cols = _columns(rows)
    if "loss" not in cols or not any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cols["loss"]):
        raise LogError(f"{p}: no numeric 'loss' column (found: {', '.join(sorted({k for r in rows for k in r})) or 'nothing'})")
    cols["loss"] = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else
                    (math.nan if v is not None else None) for v in cols["loss"]]
    return cols
