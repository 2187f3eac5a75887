"""Training tools: LR finder, monitor, early stopping, doctor, audit, NaN tracer, recipes."""

from ._findings import Finding, Findings
from .doctor import diagnose
from .early_stopping import EarlyStopping
from .lr_finder import LRFinderResult, find_lr
from .monitor import Monitor

__all__ = ["Finding", "Findings", "diagnose", "EarlyStopping", "find_lr", "LRFinderResult", "Monitor"]
