"""Learning-rate schedules of the estimators, as closed-form functions of the step.

Every schedule here maps a counter ``t >= 0`` to a learning rate: for ``optimal`` and
``invscaling`` (:data:`SAMPLE_SCHEDULES`) ``t`` is the number of samples seen, as in
scikit-learn's ``SGDClassifier`` formulas (whose counter starts at 1: ``t_sk = t + 1``);
for the others it is the number of optimizer steps taken.

* ``constant``: :math:`\\eta_t = \\eta_0`
* ``optimal``: :math:`\\eta_t = 1 / (\\alpha (t_0 + t))` with scikit-learn's heuristic
  :math:`t_0 = 1 / (\\eta_{\\mathrm{init}}\\,\\alpha)`,
  :math:`\\eta_{\\mathrm{init}} = w_{\\mathrm{typ}} / \\max(1, \\ell'(-w_{\\mathrm{typ}}, 1))`,
  :math:`w_{\\mathrm{typ}} = \\sqrt{1/\\sqrt{\\alpha}}` (Bottou's "SGD tricks")
* ``invscaling``: :math:`\\eta_t = \\eta_0 / (t + 1)^{p}`
* ``warmup_cosine``: linear warmup over ``warmup`` of the horizon, then a cosine to 0
* ``adaptive``: constant, divided by 5 by the estimator after ``n_iter_no_change``
  epochs without a ``tol`` improvement (the division is stateful and lives in the
  estimator; the value here is the current base)
* a callable ``f(t)``: :math:`\\eta_t = \\eta_0 f(t)` (a multiplier, as
  ``torch.optim.lr_scheduler.LambdaLR`` and :mod:`descent.schedules` use)

With ``batch_size=1`` the values are identical to scikit-learn's per-sample updates.
With mini-batches the linear estimators make one step of a sample schedule worth the
``B`` per-sample steps it replaces (see :mod:`descent.sklearn._base`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["SAMPLE_SCHEDULES", "SCHEDULES", "make_schedule", "optimal_t0"]

SCHEDULES = ("constant", "optimal", "invscaling", "adaptive", "warmup_cosine")
#: scikit-learn's formulas, whose counter is the number of samples seen.
SAMPLE_SCHEDULES = ("optimal", "invscaling")


def optimal_t0(alpha: float, dloss_at: Callable[[float, float], float]) -> float:
    """scikit-learn's offset for ``learning_rate="optimal"``.

    Args:
        alpha: the regularization strength (must be > 0).
        dloss_at: derivative of the loss in the prediction, ``dloss_at(p, y)``.

    Returns:
        :math:`t_0` such that the first step's rate is :math:`\\eta_{\\mathrm{init}}`.

    Example:
        >>> round(optimal_t0(1e-4, lambda p, y: -y), 6)  # hinge
        1000.0
    """
    typw = math.sqrt(1.0 / math.sqrt(alpha))
    eta_init = typw / max(1.0, dloss_at(-typw, 1.0))
    return 1.0 / (eta_init * alpha)


def make_schedule(
    schedule: str | Callable[[int], float],
    lr: float,
    *,
    alpha: float = 1e-4,
    power_t: float = 0.5,
    warmup: float = 0.1,
    total_steps: int = 1,
    dloss_at: Callable[[float, float], float] | None = None,
) -> Callable[[int], float]:
    """Return ``t -> learning rate`` for the named schedule (see the module docstring for ``t``).

    Args:
        schedule: a name from :data:`SCHEDULES` or a callable multiplier ``f(t)``.
        lr: the base learning rate :math:`\\eta_0` (unused by ``optimal``).
        alpha: regularization strength, for ``optimal``.
        power_t: exponent of ``invscaling``.
        warmup: fraction of ``total_steps`` spent warming up in ``warmup_cosine``.
        total_steps: horizon of ``warmup_cosine`` in steps; later steps get the final rate 0.
        dloss_at: derivative of the loss, for ``optimal``'s offset.

    Raises:
        ValueError: for an unknown name or a bad argument.

    Example:
        >>> f = make_schedule("invscaling", 0.1, power_t=0.5)
        >>> round(f(3), 6)
        0.05
    """
    if callable(schedule):
        return lambda t: lr * float(schedule(t))
    if schedule in ("constant", "adaptive"):
        return lambda t: lr
    if schedule == "invscaling":
        return lambda t: lr / math.pow(t + 1.0, power_t)
    if schedule == "optimal":
        if not alpha > 0:
            raise ValueError(f"Invalid alpha: {alpha} (schedule='optimal' needs alpha > 0)")
        t0 = optimal_t0(alpha, dloss_at or (lambda p, y: -y))
        return lambda t: 1.0 / (alpha * (t0 + t))
    if schedule == "warmup_cosine":
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"Invalid warmup: {warmup} (must be in [0, 1))")
        total = max(int(total_steps), 1)
        n_warm = int(round(warmup * total))
        return lambda t: _warmup_cosine(t, lr, n_warm, total)
    raise ValueError(f"Invalid schedule: {schedule!r} (must be one of {', '.join(SCHEDULES)} or a callable)")


def _warmup_cosine(t: int, lr: float, n_warm: int, total: int) -> float:
    if t < n_warm:
        return lr * (t + 1) / n_warm
    if t >= total:
        return 0.0
    progress = (t - n_warm) / max(total - n_warm, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_schedule(schedule: Any) -> None:
    """Raise ``ValueError`` unless ``schedule`` is a known name or a callable."""
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"Invalid schedule: {schedule!r} (must be one of {', '.join(SCHEDULES)} or a callable)")
