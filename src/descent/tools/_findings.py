"""The finding type shared by :func:`descent.diagnose` (history) and :func:`descent.audit` (configuration)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Finding", "Findings", "SEVERITIES"]

#: Allowed severities, most serious first.
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem found in a training run or its configuration.

    Attributes:
        code: stable machine-readable identifier (e.g. ``"early_divergence"``); never renamed.
        severity: ``"error"`` (the run is broken), ``"warning"`` (likely hurts) or ``"info"``.
        message: what was seen, in one sentence.
        evidence: the numbers behind it (steps, values, parameter names, ...), JSON-serialisable.
        fix: the first thing to try.
        source: where the rule comes from (source document section or paper).

    Example:
        >>> f = Finding("plateau", "warning", "loss barely moved", {"steps": [0, 99]}, "raise lr", "001")
        >>> f.code, f.to_dict()["fix"]
        ('plateau', 'raise lr')
    """

    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Invalid severity: {self.severity!r} (must be one of {SEVERITIES})")

    def to_dict(self) -> dict[str, Any]:
        """The finding as a plain dict (for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message} -> {self.fix}"


class Findings(list):
    """A list of :class:`Finding` with ``notes``: why the list may be empty or incomplete.

    ``notes`` says which rules could not run (e.g. "no val_loss column: overfitting not checked"),
    so an empty result is an explained one.
    """

    def __init__(self, items: Any = (), notes: list[str] | None = None) -> None:
        super().__init__(items)
        self.notes: list[str] = list(notes or [])

    @property
    def codes(self) -> list[str]:
        """The codes of the findings, in order."""
        return [f.code for f in self]

    def __repr__(self) -> str:
        return f"Findings({list.__repr__(self)}, notes={self.notes!r})"
