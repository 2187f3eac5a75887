"""Argument types and checks for ``descent``: every bad value becomes one line naming it and what is allowed."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """Bad input from the user (exit code 2)."""


class Failure(Exception):
    """The command could not do its job (exit code 1)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``descent train: error: ...``), exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not allowed (must be a finite number)")
    return value


def int_at_least(low: int) -> Any:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed (must be an integer >= {low})")
        return value
    parse.__name__ = f"int>={low}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed (must be a finite number > 0)")
    return value


def float_list(text: str, what: str) -> list[float]:
    """Comma-separated positive finite numbers, or a :class:`UsageError` naming the bad entry."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            out.append(positive_float(item))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"Invalid {what} entry: {exc}") from None
    if not out:
        raise UsageError(f"Invalid {what}: {text!r} (give at least one positive number)")
    return out


def int_list(text: str, what: str) -> list[int]:
    """Comma-separated integers >= 1, or a :class:`UsageError` naming the bad entry."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            out.append(positive_int(item))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"Invalid {what} entry: {exc}") from None
    if not out:
        raise UsageError(f"Invalid {what}: {text!r} (give at least one integer >= 1)")
    return out


def writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove a file can be written there, before any work.

    Raises:
        Failure: the folder cannot be created or written (the message names it and why).
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".descent-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise Failure(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    return out
