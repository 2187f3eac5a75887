"""Training tools: LR finder, monitor, early stopping, doctor, audit, NaN tracer, recipes.

The doctor (:func:`diagnose`, over a run's history) and the audit (:func:`audit`, over a
configuration) both return :class:`Findings` of :class:`Finding`. The columnar history format
they share with :class:`Monitor` and the CLI is described in :mod:`descent.tools.doctor`.
"""

from ._findings import Finding, Findings
from .audit import AUDIT_CODES, audit
from .doctor import CODES, as_columns, diagnose
from .early_stopping import EarlyStopping
from .lr_finder import LRFinderResult, find_lr, suggest_lr
from .monitor import Monitor
from .nan_trace import NanTrace, trace_nan
from .recipes import SCENARIOS, Recipe, recipe

__all__ = ["Finding", "Findings", "diagnose", "as_columns", "CODES", "audit", "AUDIT_CODES", "EarlyStopping",
           "find_lr", "suggest_lr", "LRFinderResult", "Monitor", "trace_nan", "NanTrace", "recipe", "Recipe",
           "SCENARIOS"]
