"""``descent.LBFGS``: torch's L-BFGS, re-exported with argument checks and a deepcopy fix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._spec import Meta
from ._validate import check_nonneg
from .registry import register

__all__ = ["LBFGS"]


class LBFGS(torch.optim.LBFGS):
    r"""torch's L-BFGS (``torch.optim.LBFGS``), unchanged in its math.

    Limited-memory BFGS (Liu & Nocedal, 1989): the two-loop recursion over the last
    ``history_size`` pairs :math:`(s_k, y_k)` gives the direction, and with
    ``line_search_fn="strong_wolfe"`` a line search satisfying the strong Wolfe
    conditions (Nocedal & Wright, Alg. 3.5/3.6) gives the step. torch's implementation is
    mature, so descent does not own the algorithm. This subclass, rather than the bare
    torch class, only adds: ``ValueError`` for invalid arguments (torch checks ``lr`` only),
    and a working ``copy.deepcopy`` (torch keeps its parameter list in a private attribute
    that ``Optimizer.__getstate__`` drops, so a deep copy of torch's LBFGS cannot step).
    It subclasses ``torch.optim.Optimizer`` through torch's class, not
    :class:`descent.Optimizer`: L-BFGS needs the closure many times per step, one flat
    history over all parameters and a single group, which the per-tensor step loop of
    the base does not model. Defaults are torch's (``lr=1, max_iter=20,
    history_size=100, line_search_fn=None``); ``"strong_wolfe"`` is recommended.

    References:
        Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization";
        Nocedal & Wright (2006), "Numerical Optimization", ch. 7.

    Note:
        Not compile-friendly (``compile_friendly = False``): the closure-driven line search tests convergence on
        the host every iteration; run the step uncompiled.

    Example:
        >>> import torch, descent
        >>> x = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
        >>> opt = descent.LBFGS([x], line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad(); loss = (x ** 2).sum(); loss.backward(); return loss
        >>> _ = opt.step(closure)
        >>> bool(x.abs().max() < 1e-6)
        True
    """

    compile_friendly = False

    meta = Meta("lbfgs", adaptive=False, state_bytes=2.0 * 100, paper="Nocedal (1980); Liu & Nocedal (1989)",
                lr={"convex": 1.0, "function": 1.0}, kind="quasi-newton")

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_nonneg("lr", lr)
        for name, value in (("max_iter", max_iter), ("history_size", history_size), ("max_eval", max_eval)):
            if value is None and name == "max_eval":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 1)")
        check_nonneg("tolerance_grad", tolerance_grad)
        check_nonneg("tolerance_change", tolerance_change)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"Invalid line_search_fn: {line_search_fn!r} (must be None or 'strong_wolfe')")
        super().__init__(params, lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
                         line_search_fn)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None


register(LBFGS)
