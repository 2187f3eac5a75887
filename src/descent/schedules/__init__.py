"""Closed-form schedules (``step -> multiplier of the base value``) and their torch adapter.

Every schedule works directly with ``torch.optim.lr_scheduler.LambdaLR``; use
:class:`Scheduler` / :func:`attach` for per-group schedules, non-lr hyperparameters,
exact resume, skip-aware stepping and the per-epoch cadence check.

Example:
    >>> import torch
    >>> from descent.schedules import WarmupCosine
    >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(1000, warmup=0.02))
"""

from ._adapter import Scheduler, attach
from ._base import Join, Schedule, join
from ._decay import (Constant, Cosine, CosineRestarts, Exponential, InverseSqrt, Linear, LinearWarmup,
                     MultiStep, RobbinsMonro, StepDecay)
from ._plateau import ReduceLROnPlateau
from ._warmup import (OneCycle, OneCycleMomentum, WarmupCosine, WarmupExponential, WarmupLinear,
                      WarmupStableDecay)

__all__ = [
    "Schedule", "Join", "join",
    "Constant", "StepDecay", "MultiStep", "Exponential", "Cosine", "CosineRestarts", "Linear",
    "LinearWarmup", "InverseSqrt", "RobbinsMonro",
    "WarmupCosine", "WarmupLinear", "WarmupExponential", "WarmupStableDecay", "OneCycle", "OneCycleMomentum",
    "ReduceLROnPlateau", "Scheduler", "attach",
]
