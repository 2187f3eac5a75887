"""descent: everything between a gradient and good weights, on PyTorch.

The public API is flat: ``descent.AdamW``, ``descent.param_groups``, ... Every name
below is re-exported from its module; nothing is defined here. ``descent.sklearn``,
``descent.numpy`` and ``descent.tasks`` are subpackages imported on demand.
"""

# --- optimizers (descent.optim; one class per file) ---------------------------------
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from .optim import KFAC, LBFGS, Muon, Shampoo
from .optim import LAMB, Adafactor, Lion, SophiaG
from .optim import ADOPT, MARS, SOAP, AdEMAMix, Prodigy, ScheduleFreeAdamW, ScheduleFreeSGD, recalibrate_batchnorm
from .optim import Adam4bit, Adam8bit, AdamW4bit, AdamW8bit, Lion8bit, SGD8bit
from .optim.param_groups import param_groups
from .optim.registry import create_optimizer, list_optimizers

# --- schedules and stability ---------------------------------------------------------
from . import schedules
from .stability.accumulate import GradientAccumulator, micro_batches_for
from .stability.amp import MixedPrecision, precision_agreement
from .stability.clip import ClipResult, clip_grad_norm_, clip_grad_value_
from .stability.nonfinite import NonFiniteGuard, skip_nonfinite
from .stability.scaling import lion_from_adamw, scale_lr
from .schedules import ReduceLROnPlateau, Scheduler, attach

# --- training tools (descent.tools) -------------------------------------------------
from .tools import (EarlyStopping, Finding, Monitor, audit, diagnose, find_lr, recipe,  # noqa: E402
                    trace_nan)

# --- crash-safe checkpoints (descent.checkpoint.save / load) -------------------------
from . import checkpoint  # noqa: E402
from .offload import CPUOffloadOptimizer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    # optimizers
    "Optimizer",
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "Muon",
    "Shampoo",
    "KFAC",
    "LBFGS",
    "Lion",
    "LAMB",
    "Adafactor",
    "SophiaG",
    "ADOPT",
    "AdEMAMix",
    "MARS",
    "Prodigy",
    "ScheduleFreeSGD",
    "ScheduleFreeAdamW",
    "recalibrate_batchnorm",
    "AdamW8bit",
    "Lion8bit",
    "Adam8bit",
    "SGD8bit",
    "AdamW4bit",
    "Adam4bit",
    "SOAP",
    "param_groups",
    "create_optimizer",
    "list_optimizers",
    # schedules and stability
    "schedules",
    "Scheduler",
    "attach",
    "ReduceLROnPlateau",
    "clip_grad_norm_",
    "clip_grad_value_",
    "ClipResult",
    "NonFiniteGuard",
    "skip_nonfinite",
    "MixedPrecision",
    "precision_agreement",
    "GradientAccumulator",
    "micro_batches_for",
    "scale_lr",
    "lion_from_adamw",
    # training tools
    "find_lr",
    "Monitor",
    "EarlyStopping",
    "diagnose",
    "audit",
    "trace_nan",
    "recipe",
    "Finding",
    # checkpoints
    "checkpoint",
    "CPUOffloadOptimizer",
]

from . import optim as _optim  # noqa: E402

#: optimizer classes registered without an export line above (see CONTRIBUTING.md)
__all__ += [_name for _name in _optim.__all__ if _name not in __all__]
globals().update({_name: getattr(_optim, _name) for _name in __all__ if _name not in globals()})
