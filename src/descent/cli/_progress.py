"""Progress bars (tqdm) that stay silent under ``--quiet``, ``--json`` or when stdout is not a TTY."""

from __future__ import annotations

import sys
from typing import Any


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def enabled(args: Any) -> bool:
    """Whether bars should be drawn for these parsed arguments."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False)) and sys.stdout.isatty()


def bar(args: Any, total: int, desc: str) -> Any:
    """A tqdm bar, or a no-op object with the same methods."""
    if not enabled(args):
        return _Null()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Null()
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def step_callback(pbar: Any, every: int = 1) -> Any:
    """A ``callback(record)`` for :func:`descent.tasks.training.train` that advances ``pbar``."""
    def cb(rec: dict[str, Any]) -> None:
        pbar.update(1)
        if rec["step"] % max(1, every) == 0 and rec.get("loss") is not None:
            pbar.set_postfix_str(f"loss {rec['loss']:.4f}")
    return cb


def says(args: Any) -> bool:
    """Whether status lines may be printed (not under ``--quiet`` or ``--json``)."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


def counting(fn: Any, pbar: Any) -> Any:
    """``fn`` wrapped so that every call advances ``pbar`` (e.g. the loss of each LR-test step)."""
    def wrapped(*a: Any, **kw: Any) -> Any:
        out = fn(*a, **kw)
        pbar.update(1)
        return out
    return wrapped
