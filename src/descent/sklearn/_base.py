"""The training engine every descent estimator shares.

:class:`DescentTrainer` runs epochs of shuffled mini-batches (sampling without
replacement, ``ceil(n / batch_size)`` steps an epoch) through any
``torch.optim.Optimizer`` chosen by name, sets the learning rate of every step from a
closed-form schedule of a counter, and implements scikit-learn's stopping rule
(``tol`` / ``n_iter_no_change``, on the training loss or on a held-out
``validation_fraction`` with ``early_stopping``). The counter and the optimizer state
survive between ``partial_fit`` calls, so schedules continue where they stopped.

The counter is the number of optimizer steps, except for scikit-learn's two formulas
(``"optimal"`` and ``"invscaling"``), which scikit-learn writes in samples seen: there
it is the number of samples seen, so the rate does not depend on ``batch_size``. A
subclass with ``_per_sample_steps = True`` (the linear models, whose scikit-learn
counterparts update after every sample) also makes one mini-batch step of those two
schedules worth the ``B`` per-sample steps it replaces: the step is the rate times the
*sum* of the ``B`` sample gradients (for plain SGD, ``B`` times the rate on the batch
mean; Adam-like optimizers are invariant to that scale). Before, a batch of 32 took
one per-sample rate on the batch mean, i.e. 1/32 of scikit-learn's progress per epoch.

Optional iterate averaging (``_average_spec``) keeps a running average of the
parameters next to the iterate; the fitted attributes are read from the average.

A subclass provides ``_init_params(n_features, n_outputs, rng)``, ``_batch_loss``,
``_after_step(lr)`` (e.g. the L1 proximal step), ``_export()`` (fitted attributes
from :meth:`_fitted_tensors`) and ``_dloss_at`` (for ``schedule="optimal"``).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from ._schedules import SAMPLE_SCHEDULES, check_schedule, make_schedule

__all__ = ["DescentTrainer", "optimizer_table", "resolve_optimizer"]

#: Optimizers that cannot run on a plain parameter list (they need the module itself).
_NEEDS_MODULE = {"kfac"}


def optimizer_table() -> dict[str, type]:
    """Lower-case class name -> class, for every optimizer in descent's registry.

    Optimizers that need the module (KFAC) are left out.

    Example:
        >>> "adamw" in optimizer_table()
        True
    """
    from ..optim.registry import list_optimizers, optimizer_info

    table = {}
    for name in list_optimizers():
        cls = optimizer_info(name).cls
        if cls.__name__.lower() not in _NEEDS_MODULE and "lr" in inspect.signature(cls.__init__).parameters:
            table[cls.__name__.lower()] = cls
    return table


def resolve_optimizer(spec: Any) -> type:
    """An optimizer class from a name (``"adamw"``, case and ``_`` ignored) or a class.

    Raises:
        ValueError: naming the valid choices when ``spec`` is unknown.
    """
    if isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer):
        return spec
    table = optimizer_table()
    if isinstance(spec, str):
        key = spec.lower().replace("_", "").replace("-", "")
        for name, cls in table.items():
            if name.replace("_", "") == key:
                return cls
    raise ValueError(f"Invalid optimizer: {spec!r} (must be a torch.optim.Optimizer subclass or one of "
                     f"{', '.join(sorted(table))})")


def _prefer_loop(cls: type, kwargs: dict[str, Any], params: list[torch.Tensor]) -> bool:
    """Small models: descent's per-tensor loop instead of the fused kernel.

    Measured on this project's 2-core CPU (a 31-element float64 model): ``descent.SGD``
    120 us a step on the loop vs 520 us fused, ``descent.Adam`` 330 vs 960 us — the fused
    kernel's thread dispatch dominates below ~1e5 elements. An explicit ``backend``,
    ``fused`` or ``foreach`` in ``optimizer_kwargs`` wins.
    """
    if any(k in kwargs for k in ("backend", "fused", "foreach")):
        return False
    decl = getattr(cls, "declaration", None)  # descent's classes declare their backends
    if "loop" not in (decl.supported() if decl is not None else {}):
        return False
    if "backend" not in inspect.signature(cls.__init__).parameters:
        return False
    return sum(p.numel() for p in params) < 100_000


def _check_number(name: str, value: Any, *, low: float, strict: bool = False, integer: bool = False) -> None:
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or (not integer and math.isnan(float(value))):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"Invalid {name}: {value!r} (must be {kind})")
    if value < low or (strict and value == low):
        raise ValueError(f"Invalid {name}: {value} (must be {'>' if strict else '>='} {low})")


class DescentTrainer:
    """Mixin with the epoch loop; see the module docstring."""

    def _validate_partial_fit_classes(self, X: Any, y: Any, classes: Any) -> tuple[Any, Any, bool]:
        """Validate ``X, y`` for ``partial_fit``; fix ``classes_`` on the first call (returns ``first``)."""
        import numpy as np
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import validate_data

        first = not hasattr(self, "classes_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._set_classes(np.unique(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                             f"was: {self.classes_!r}")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown!r} that are not in classes {self.classes_!r}")
        return X, y, first

    _dtype: torch.dtype = torch.float64
    _is_classifier: bool = False
    #: One mini-batch step of a per-sample schedule sums the sample gradients (see the module docstring).
    _per_sample_steps: bool = False

    # ----------------------------------------------------------- validation
    def _check_common_params(self) -> None:
        _check_number("lr", self.lr, low=0.0, strict=True)
        _check_number("alpha", self.alpha, low=0.0)
        _check_number("max_iter", self.max_iter, low=1, integer=True)
        _check_number("n_iter_no_change", self.n_iter_no_change, low=1, integer=True)
        if self.tol is not None:
            _check_number("tol", self.tol, low=-math.inf)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"Invalid validation_fraction: {self.validation_fraction} (must be in (0, 1))")
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("power_t", self.power_t, low=-math.inf)
        check_schedule(self.schedule)
        if self.optimizer_kwargs is not None and not isinstance(self.optimizer_kwargs, dict):
            raise ValueError(f"Invalid optimizer_kwargs: {self.optimizer_kwargs!r} (must be a dict or None)")
        resolve_optimizer(self.optimizer)

    #: ``batch_size="auto"`` is ``min(200, ceil(n / _auto_min_steps))``: at least this many steps an epoch.
    _auto_min_steps: int = 10

    def _batch_size_for(self, n: int) -> int:
        """``batch_size`` for ``n`` training samples; ``"auto"`` is ``min(200, ceil(n / 10))``.

        scikit-learn's ``"auto"`` is ``min(200, n)``: below 200 samples every epoch is one
        full-batch step, so 100 epochs of Adam at ``lr=1e-3`` are 100 small steps and a
        classifier is under-trained (iris, 112 training samples: 0.88 accuracy). Here
        ``"auto"`` gives at least ``_auto_min_steps`` steps an epoch (10; the MLP regressor
        keeps scikit-learn's rule, see its docstring) and is 200 from 2,000 samples on.
        """
        if isinstance(self.batch_size, str):
            return max(1, min(200, math.ceil(n / self._auto_min_steps)))
        return max(1, min(int(self.batch_size), n))

    # ---------------------------------------------------------- optimizer
    def _new_run(self, n_train: int) -> None:
        """Fresh optimizer, step counter and schedule for a run over ``n_train`` samples."""
        kwargs = dict(self.optimizer_kwargs or {})
        if "lr" in kwargs:
            raise ValueError("Invalid optimizer_kwargs: 'lr' goes in the estimator's lr= (the schedule sets it)")
        cls = resolve_optimizer(self.optimizer)
        if _prefer_loop(cls, kwargs, self._params):
            kwargs["backend"] = "loop"
        try:
            self._optim = cls(self._params, lr=float(self.lr), **kwargs)
        except TypeError as exc:
            raise ValueError(f"Invalid optimizer_kwargs for {cls.__name__}: {exc}") from exc
        self._horizon = self.max_iter * math.ceil(n_train / self._batch_size_for(n_train))
        self._schedule_fn = self._build_schedule()
        self.n_steps_ = 0
        self._seen = 0
        self._lr_scale = 1.0
        self._best = math.inf
        self._no_improve = 0
        self._best_state: tuple | None = None
        self._reset_average()

    def _dloss_at(self, p: float, y: float) -> float:
        return -y

    def _build_schedule(self) -> Callable[[int], float]:
        return make_schedule(
            self.schedule, float(self.lr), alpha=float(self.alpha), power_t=float(self.power_t),
            warmup=float(getattr(self, "warmup", 0.1)), total_steps=self._horizon, dloss_at=self._dloss_at)

    def _per_sample_schedule(self) -> bool:
        return isinstance(self.schedule, str) and self.schedule in SAMPLE_SCHEDULES

    def current_lr(self) -> float:
        """The learning rate the next step will use (after any ``adaptive`` divisions).

        For ``"optimal"`` and ``"invscaling"`` this is the per-sample rate at the number of
        samples seen; otherwise the rate of the next optimizer step.
        """
        fn = self.__dict__.get("_schedule_fn")
        if fn is None:  # after unpickling
            fn = self._schedule_fn = self._build_schedule()
        clock = self.__dict__.get("_seen", 0) if self._per_sample_schedule() else self.n_steps_
        return fn(clock) * self._lr_scale

    # ------------------------------------------------------------- epochs
    def _tensors(self, *arrays: np.ndarray | None) -> list[torch.Tensor | None]:
        np_dtype = np.float64 if self._dtype == torch.float64 else np.float32
        return [None if a is None else torch.from_numpy(np.array(a, dtype=np_dtype, order="C", copy=True))
                for a in arrays]

    def _run_epoch(self, X: np.ndarray, Y: np.ndarray, sw: np.ndarray) -> float:
        """One pass of shuffled mini-batches; returns the mean objective over the pass."""
        Xt, Yt, st = self._tensors(X, Y, sw)
        n = X.shape[0]
        bs = self._batch_size_for(n)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        summed = self._per_sample_steps and self._per_sample_schedule()
        total = 0.0
        schedule_free = "train_mode" in self._optim.param_groups[0] and callable(getattr(self._optim, "train", None))
        if schedule_free:  # schedule-free: gradients at y; between epochs (predict) the weights hold x
            self._optim.train()
        for start in range(0, n, bs):
            idx = torch.as_tensor(order[start:start + bs])
            xb, yb, sb = Xt[idx], Yt[idx], st[idx]
            lr = self.current_lr()
            scale = float(len(idx)) if summed else 1.0
            for group in self._optim.param_groups:
                group["lr"] = lr

            def closure() -> torch.Tensor:
                self._optim.zero_grad()
                loss = self._batch_loss(xb, yb, sb, n)
                (loss * scale if scale != 1.0 else loss).backward()
                return loss

            loss = self._optim.step(closure)
            self.n_steps_ += 1
            self._seen = self.__dict__.get("_seen", 0) + len(idx)
            with torch.no_grad():
                self._after_step(lr * scale)
                self._update_average()
            total += float(loss.detach()) * len(idx)
        if schedule_free:
            self._optim.eval()
        self.t_ += n
        return total / n + self._extra_penalty()

    def _extra_penalty(self) -> float:
        return 0.0

    def _after_step(self, lr: float) -> None:
        """Hook after each optimizer step (no grad), e.g. a proximal step; ``lr`` is the step's rate."""

    # ---------------------------------------------------------- averaging
    def _average_spec(self) -> tuple[str, int] | None:
        """``None`` (no averaging), ``("uniform", start_sample)`` or ``("linear", 0)``."""
        return None

    def _reset_average(self) -> None:
        self._avg: list[torch.Tensor] | None = None
        self._avg_weight = 0.0

    def _update_average(self) -> None:
        """Fold the iterate after this step into the running average (no grad)."""
        spec = self._average_spec()
        if spec is None:
            return
        kind, start = spec
        if self.__dict__.get("_avg") is None:
            self._avg = [p.detach().clone() for p in self._params]
            self._avg_weight = 0.0
        if kind == "uniform":
            if self._seen < start:  # not started: the "average" is the iterate
                for a, p in zip(self._avg, self._params):
                    a.copy_(p)
                return
            w = 1.0
        else:  # "linear": weight proportional to the step number
            w = float(self.n_steps_)
        self._avg_weight += w
        c = w / self._avg_weight
        for a, p in zip(self._avg, self._params):
            a.add_(p.detach() - a, alpha=c)

    def _fitted_tensors(self) -> list[torch.Tensor]:
        """The tensors the fitted attributes come from: the running average if there is one."""
        avg = self.__dict__.get("_avg")
        if self._average_spec() is not None and avg is not None:
            return avg
        return self._params

    def _snapshot(self) -> tuple:
        avg = self.__dict__.get("_avg")
        return ([p.detach().clone() for p in self._params],
                None if avg is None else [a.clone() for a in avg], self.__dict__.get("_avg_weight", 0.0))

    def _restore(self, state: tuple) -> None:
        params, avg, weight = state
        with torch.no_grad():
            for p, best in zip(self._params, params):
                p.copy_(best)
        self._avg, self._avg_weight = avg, weight

    def _stopped(self, score: float) -> bool:
        """scikit-learn's rule on a lower-is-better score; may divide the lr (``adaptive``)."""
        if self.tol is not None and score > self._best - self.tol:
            self._no_improve += 1
        else:
            self._no_improve = 0
        if score < self._best:
            self._best = score
            if self.early_stopping:
                self._best_state = self._snapshot()
        if self._no_improve < self.n_iter_no_change:
            return False
        if self.schedule == "adaptive" and self.current_lr() / 5.0 > 1e-6:
            self._lr_scale /= 5.0
            self._no_improve = 0
            return False
        return True

    def _fit_loop(self, X: np.ndarray, Y: np.ndarray, sw: np.ndarray, y_raw: np.ndarray) -> None:
        """Full ``fit``: optional validation split, then up to ``max_iter`` epochs."""
        X_val = y_val = None
        if self.early_stopping:
            stratify = y_raw if self._is_classifier else None
            idx = np.arange(X.shape[0])
            tr, va = train_test_split(idx, test_size=self.validation_fraction, stratify=stratify,
                                      random_state=self._rng.randint(np.iinfo(np.int32).max))
            if len(va) < 2 or len(tr) < 1:
                raise ValueError(f"Invalid validation_fraction: {self.validation_fraction} leaves "
                                 f"{len(va)} validation and {len(tr)} training samples (need 2 and 1)")
            X_val, y_val = X[va], y_raw[va]
            X, Y, sw = X[tr], Y[tr], sw[tr]
        self._new_run(X.shape[0])
        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] | None = [] if self.early_stopping else None
        converged = False
        for epoch in range(self.max_iter):
            loss = self._run_epoch(X, Y, sw)
            self.loss_curve_.append(loss)
            self.n_iter_ = epoch + 1
            if not math.isfinite(loss):
                raise ValueError(f"Floating-point under-/overflow occurred at epoch #{epoch + 1} (loss {loss}). "
                                 f"Scaling input data with StandardScaler or MinMaxScaler, or a lower lr "
                                 f"(now {self.lr}), might help.")
            if self.early_stopping:
                self._export()
                val = float(self.score(X_val, y_val))
                self.validation_scores_.append(val)
                score = -val
            else:
                score = loss
            if self._stopped(score):
                converged = True
                break
        if self.early_stopping and self._best_state is not None:
            self._restore(self._best_state)
        self._best_state = None
        self.best_loss_ = min(self.loss_curve_)
        if self.early_stopping:
            self.best_validation_score_ = max(self.validation_scores_)
        self._export()
        if not converged and self.tol is not None:
            warnings.warn(f"Maximum number of iteration reached ({self.max_iter}) before convergence; "
                          "consider increasing max_iter.", ConvergenceWarning, stacklevel=3)

    def _partial_loop(self, X: np.ndarray, Y: np.ndarray, sw: np.ndarray) -> None:
        """One epoch on ``X``, continuing the optimizer state and the step counter."""
        if not hasattr(self, "_optim"):
            self._new_run(X.shape[0])
            self.loss_curve_ = []
            self.n_iter_ = 0
        loss = self._run_epoch(X, Y, sw)
        self.loss_curve_.append(loss)
        self.n_iter_ += 1
        self._export()

    # ---------------------------------------------------------------- misc
    def _seed_rng(self) -> None:
        from sklearn.utils import check_random_state

        rs = check_random_state(self.random_state)
        # Own copy: never advance a RandomState the user passed in.
        self._rng = np.random.RandomState(rs.randint(np.iinfo(np.int32).max))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state = dict(state)
        state.pop("_schedule_fn", None)  # a closure; rebuilt on first use
        return state


def dloss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], p: float, y: float) -> float:
    """Derivative of ``loss_fn`` in the prediction at ``(p, y)`` (autograd, float64)."""
    pt = torch.tensor([p], dtype=torch.float64, requires_grad=True)
    loss_fn(pt, torch.tensor([y], dtype=torch.float64)).sum().backward()
    return float(pt.grad[0])
