"""The compile path of the shared step loop (see :mod:`descent.optim._base`).

Inside ``torch.compile`` every bucket runs a backend dynamo can trace, and what must not be
traced happens in one ``torch.compiler.disable``d call at the start of the step.

Example:
    >>> import descent, torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = descent.AdamW(model.parameters(), lr=1e-3)
    >>> step = torch.compile(opt.step, backend="eager")
    >>> model(torch.randn(3, 4)).sum().backward(); step()
    >>> opt.state[model.weight]["step"]
    tensor(1.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._spec import Declaration, Kernel

if TYPE_CHECKING:
    from ._base import Optimizer, Work

__all__ = ["COMPILE_BACKENDS", "compile_backend"]

#: Backends whose kernels dynamo traces: the multi-tensor ops of torch and of
#: :mod:`descent.kernels.foreach`, and the per-tensor functional. Never the "fused" ones
#: (descent's are Numba, torch's are ``torch.compiler.disable``d).
COMPILE_BACKENDS = ("foreach", "loop")


def compile_backend(decl: Declaration | None, requested: str | None, device: torch.device,
                    dtype: torch.dtype) -> str:
    """The backend of a bucket inside ``torch.compile``: foreach where the declaration binds a
    multi-tensor kernel for it (unless the loop was asked for), else the functional.

    Example:
        >>> import descent, torch
        >>> compile_backend(descent.AdamW.declaration, "fused", torch.device("cpu"), torch.float32)
        'foreach'
    """
    if requested != "loop" and decl is not None and decl.kernel_for("foreach", device, dtype) is not None:
        return "foreach"
    return "loop"


_COMPILE_READY: list[bool] = []  # non-empty once every foreach launcher is imported
#: State key of the next step number as a Python int, present only inside a compiled step.
_NEXT_STEP = "_descent_next_step"


def _wants_step_ints(opt: Optimizer) -> bool:
    """The compiled step of ``opt`` needs step numbers as ints (its foreach kernel or functional takes them)."""
    decl = opt.declaration
    if decl is None or not decl.steps:
        return False
    bound = decl.kernels.get("foreach")
    kernels = (bound,) if isinstance(bound, Kernel) else (bound or ())
    if any(k.steps == "int" for k in kernels):
        return True
    return decl.step_arg and (not kernels or any(g.get("backend") == "loop" for g in opt.param_groups))


@torch.compiler.disable
def _prepare_compile(opt: Optimizer, work: Work) -> None:
    """What the compiled step must not trace: the lazy state of the parameters to step, the
    imports of the multi-tensor launchers (once per process) and, for optimizers whose math
    takes the step number, that number as an int (under the state key ``_NEXT_STEP``,
    removed at the end of the step)."""
    ints = _wants_step_ints(opt)
    for group, params, _, _ in work:
        for p in params:
            state = opt._state_of(p, group)
            if ints and isinstance(state.get("step"), Tensor):
                state[_NEXT_STEP] = int(state["step"]) + 1
    if not _COMPILE_READY:
        from .registry import _REGISTRY

        for entry in list(_REGISTRY.values()):
            decl = getattr(entry.cls, "declaration", None)
            bound = decl.kernels.get("foreach") if decl is not None else None
            for kernel in (bound,) if isinstance(bound, Kernel) else (bound or ()):
                kernel.resolve()
        _COMPILE_READY.append(True)
