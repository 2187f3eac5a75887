"""One call for "which lr for this task, optimizer and run length?", shared by the CLI and benchmarks.

``descent find-lr``, ``descent demo``, ``descent train --lr auto`` and
``benchmarks/lr_suggestion.py`` all call :func:`find_task_lr` with these defaults, so the same task,
optimizer, seed and run length give the same suggestion everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .lr_finder import LRFinderResult, find_lr

__all__ = ["find_task_lr", "START_LR", "END_LR", "NUM_ITER"]

#: the range test's defaults everywhere a task's lr is suggested (those of :func:`descent.find_lr`).
START_LR = 1e-7
END_LR = 10.0
NUM_ITER = 100


def find_task_lr(task: Any, optimizer: str, total_steps: int | None, *, seed: int = 0, warmup: float = 0.0,
                 start_lr: float = START_LR, end_lr: float = END_LR, num_iter: int = NUM_ITER,
                 forward: Callable[[nn.Module, Any], Tensor] | None = None) -> LRFinderResult:
    """:func:`descent.find_lr` on a fresh seeded model of a built-in ``task``, for a run of ``total_steps``.

    The optimizer is built as :func:`descent.tasks.training.train` builds it (at the task's default
    lr, so multi-group ratios such as Muon's auxiliary AdamW are those of a real run), the batches
    are the task's training batches from step 0, and the schedule is the one ``train`` uses
    (warmup-cosine to 10 %, ``warmup`` fraction).

    Args:
        task: a :class:`descent.tasks.Task`.
        optimizer: a name from :data:`descent.tasks.training.OPTIMIZERS`.
        total_steps: the run's length (``None``: the range test's own suggestion).
        seed: the model's initialisation seed.
        warmup: the run's warmup fraction.
        start_lr, end_lr, num_iter: the range test's sweep.
        forward: replaces ``task.loss`` (e.g. wrapped to count steps for a progress bar).

    Returns:
        The :class:`~descent.tools.lr_finder.LRFinderResult`.

    Example:
        >>> from descent.tasks import get_task
        >>> res = find_task_lr(get_task("linear"), "adamw", 60, num_iter=40)
        >>> res.method, res.suggestion is not None
        ('probe', True)
    """
    import descent
    from descent.tasks.training import make_optimizer

    model = task.make_model(seed)
    opt = make_optimizer(optimizer, model, task.lr_for(optimizer))
    schedule = None
    n = num_iter
    if total_steps is not None:
        if int(total_steps) != total_steps or total_steps < 2:
            raise ValueError(f"Invalid total_steps: {total_steps} (must be an integer >= 2 or None)")
        schedule = descent.schedules.WarmupCosine(int(total_steps), warmup=warmup, min_ratio=0.1)
        n = max(num_iter, int(total_steps))
    batches = [task.train.at(i) for i in range(n)]
    return find_lr(model, opt, batches, forward=task.loss if forward is None else forward, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter,
                   total_steps=total_steps, schedule=schedule)
