"""One table that drives the shared optimizer tests (as torch's ``OptimizerInfo``).

Each :class:`OptimizerSpec` row says how to build the optimizer, which references it
must match (torch.optim where torch has the algorithm, a float64 NumPy rule from
``tests/reference`` always), which backends to check, which inputs must be refused,
and the lr/steps/tolerance of its convergence facts. ``tests/test_optim_common.py``
runs every row through the same checks; add a row to cover a new optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import descent
from reference._oracle import oracle
from reference.first_order import adagrad_rule, adam_rule, rmsprop_rule, sgd_rule

#: Parameter shapes of the standard run: group 0 then group 1. Index 2 is zero-size,
#: index 3 is frozen mid-run, index 1 misses its gradient on one step.
SHAPES: tuple[tuple[int, ...], ...] = ((6, 5), (5,), (0,), (4, 3), (3, 4), (4,))
GROUP0 = 4  # the first four shapes form group 0


@dataclass
class Convergence:
    """Convergence facts: lr (and extra kwargs), steps and distance-to-optimum tolerances."""

    lr: float
    steps: int
    quadratic_tol: float
    rosenbrock_tol: float | None = None
    rosenbrock_lr: float | None = None
    rosenbrock_steps: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerSpec:
    """How the shared tests exercise one optimizer class."""

    name: str
    cls: type
    configs: list[dict[str, Any]]
    group2: dict[str, Any]
    references: dict[str, Callable[..., torch.optim.Optimizer]]
    converge: Convergence
    backends: tuple[str, ...] = ("loop",)
    torch_cls: type | None = None
    atol: float = 1e-12
    error_inputs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    shapes: tuple[tuple[int, ...], ...] = SHAPES
    #: state keys that are not tensors shaped like the parameter (skipped in state comparison)
    state_skip: tuple[str, ...] = ()
    low_precision: dict[torch.dtype, float] = field(
        default_factory=lambda: {torch.float32: 1e-4, torch.bfloat16: 6e-2})

    def ids(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(len(self.configs))]


_COMMON_ERRORS = [
    ({"lr": -1e-3}, "Invalid lr: -0.001"),
]

SPECS: list[OptimizerSpec] = [
    OptimizerSpec(
        name="SGD",
        cls=descent.SGD,
        configs=[
            dict(lr=0.05),
            dict(lr=0.05, momentum=0.9, weight_decay=0.01),
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
            dict(lr=0.05, momentum=0.8, dampening=0.3),
        ],
        group2=dict(lr=0.01, weight_decay=0.05),
        references={"torch": torch.optim.SGD, "numpy": oracle(sgd_rule, momentum=0.0, dampening=0.0,
                                                                       weight_decay=0.0, nesterov=False)},
        torch_cls=torch.optim.SGD,
        backends=("loop", "foreach", "fused"),
        converge=Convergence(lr=0.05, steps=300, quadratic_tol=1e-6, rosenbrock_tol=2e-2,
                             rosenbrock_lr=1e-3, rosenbrock_steps=5000, kwargs=dict(momentum=0.9)),
        error_inputs=_COMMON_ERRORS + [
            ({"lr": 0.1, "momentum": -0.5}, "Invalid momentum: -0.5"),
            ({"lr": 0.1, "weight_decay": -1.0}, "Invalid weight_decay: -1.0"),
            ({"lr": 0.1, "nesterov": True}, "Invalid nesterov=True with momentum=0"),
            ({"lr": 0.1, "nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening=0.1"),
            ({"lr": 0.1, "backend": "warp"}, "Invalid backend: 'warp'"),
            ({"lr": 0.1, "foreach": True, "fused": True}, "foreach=True with fused=True"),
        ],
    ),
    OptimizerSpec(
        name="Adam",
        cls=descent.Adam,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
            dict(lr=0.01, weight_decay=0.05, maximize=True),
            dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), eps=1e-6),
        references={"torch": torch.optim.Adam,
                    "numpy": oracle(adam_rule, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)},
        torch_cls=torch.optim.Adam,
        backends=("loop", "foreach", "fused"),
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=1e-3, rosenbrock_tol=2e-2,
                             rosenbrock_lr=0.02, rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 1.5)}, r"Invalid beta2: 1.5 \(must be in \[0, 1\)\)"),
            ({"betas": (-0.1, 0.99)}, "Invalid beta1: -0.1"),
            ({"eps": -1e-8}, "Invalid eps: -1e-08"),
            ({"weight_decay": -0.1}, "Invalid weight_decay: -0.1"),
            ({"capturable": True, "state_bits": 8}, "Invalid capturable=True with state_bits=8"),
        ],
    ),
    OptimizerSpec(
        name="AdamW",
        cls=descent.AdamW,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.9, 0.95)),
            dict(lr=0.02, weight_decay=0.3, maximize=True),
        ],
        group2=dict(lr=0.004, weight_decay=0.0),
        references={"torch": torch.optim.AdamW,
                    "numpy": oracle(adam_rule, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                                    decoupled_weight_decay=True)},
        torch_cls=torch.optim.AdamW,
        backends=("loop", "foreach", "fused"),
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=1e-3, rosenbrock_tol=2e-2,
                             rosenbrock_lr=0.02, rosenbrock_steps=5000, kwargs=dict(weight_decay=0.0)),
        error_inputs=_COMMON_ERRORS + [({"betas": (1.0, 0.999)}, "Invalid beta1: 1.0")],
    ),
    OptimizerSpec(
        name="Adagrad",
        cls=descent.Adagrad,
        configs=[
            dict(lr=0.1),
            dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1),
            dict(lr=0.1, eps=1e-6, maximize=True),
        ],
        group2=dict(lr=0.03, lr_decay=0.05),
        references={"torch": torch.optim.Adagrad,
                    "numpy": oracle(adagrad_rule, lr_decay=0.0, weight_decay=0.0,
                                    initial_accumulator_value=0.0, eps=1e-10)},
        torch_cls=torch.optim.Adagrad,
        backends=("loop", "foreach", "fused"),
        converge=Convergence(lr=0.5, steps=1000, quadratic_tol=1e-4, rosenbrock_tol=5e-2,
                             rosenbrock_lr=2.0, rosenbrock_steps=10000),
        error_inputs=_COMMON_ERRORS + [
            ({"lr_decay": -1.0}, "Invalid lr_decay: -1.0"),
            ({"eps": -1.0}, "Invalid eps: -1.0"),
        ],
    ),
    OptimizerSpec(
        name="RMSprop",
        cls=descent.RMSprop,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.1),
            dict(lr=0.01, momentum=0.5, maximize=True),
        ],
        group2=dict(lr=0.002, alpha=0.95, eps=1e-5),
        references={"torch": torch.optim.RMSprop,
                    "numpy": oracle(rmsprop_rule, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                    momentum=0.0, centered=False)},
        torch_cls=torch.optim.RMSprop,
        backends=("loop", "foreach", "fused"),
        converge=Convergence(lr=0.01, steps=2000, quadratic_tol=2e-2, rosenbrock_tol=2e-2,
                             rosenbrock_lr=3e-3, rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [({"alpha": 1.5}, "Invalid alpha: 1.5"),
                                        ({"momentum": -0.1}, "Invalid momentum: -0.1")],
    ),
]


def spec(name: str) -> OptimizerSpec:
    """The row named ``name``."""
    for s in SPECS:
        if s.name == name:
            return s
    raise KeyError(name)


# --- matrix optimizers (issue 3): Muon, Shampoo ------------------------------------
from reference.matrix import muon_rule, shampoo_rule  # noqa: E402

#: Muon takes matrices and kernels only: the standard run with 2-D shapes, a zero-size
#: one and a conv kernel. (torch.optim.Muon is no float64 reference: it iterates in bf16;
#: tests/test_matrix_optim.py checks parity with it in float32.)
MUON_SHAPES: tuple[tuple[int, ...], ...] = ((6, 5), (5, 4), (0, 3), (4, 3), (3, 4), (2, 3, 2, 2))

SPECS += [
    OptimizerSpec(
        name="Muon",
        cls=descent.Muon,
        configs=[
            dict(lr=0.02),
            dict(lr=0.02, nesterov=False, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"),
            dict(lr=0.05, momentum=0.9, ns_steps=3, maximize=True),
        ],
        group2=dict(lr=0.01, momentum=0.8, weight_decay=0.05),
        references={"numpy": oracle(muon_rule, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                                    ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                                    adjust_lr_fn=None)},
        backends=("loop", "foreach", "fused"),
        shapes=MUON_SHAPES,
        # plain vectors (the quadratic, Rosenbrock) are routed to Muon's auxiliary AdamW
        converge=Convergence(lr=0.02, steps=1000, quadratic_tol=1e-3, rosenbrock_tol=2e-2,
                             rosenbrock_steps=5000, kwargs=dict(adamw_lr=0.005)),
        # the default iteration runs in bf16 for float32 parameters (as torch's)
        low_precision={torch.float32: 1e-2, torch.bfloat16: 6e-2},
        error_inputs=_COMMON_ERRORS + [
            ({"momentum": 1.5}, r"Invalid momentum: 1.5"),
            ({"ns_steps": 0}, "Invalid ns_steps: 0"),
            ({"adjust_lr_fn": "rms"}, "Invalid adjust_lr_fn: 'rms'"),
            ({"weight_decay": -1.0}, "Invalid weight_decay: -1.0"),
        ],
    ),
    OptimizerSpec(
        name="Shampoo",
        cls=descent.Shampoo,
        configs=[
            dict(lr=0.01, grafting=None, eps=1e-6, maximize=True, block_size=3),
            dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, grafting="sgd", update_freq=3, block_size=4),
            dict(lr=0.01),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), update_freq=2),
        references={"numpy": oracle(shampoo_rule, betas=(0.9, 0.999), eps=1e-12, weight_decay=0.0,
                                    update_freq=10, block_size=256, grafting="adam", graft_eps=1e-8)},
        backends=("loop",),
        # (L + eps I)^(-1/4) of rank-deficient statistics amplifies round-off (eps=1e-12)
        atol=1e-8,
        low_precision={torch.float32: 5e-3, torch.bfloat16: 6e-2},
        # vectors take the diagonal (Adam-like) fallback here
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=1e-3, rosenbrock_tol=2e-2,
                             rosenbrock_lr=0.02, rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 1.0)}, "Invalid beta2: 1.0"),
            ({"update_freq": 0}, "Invalid update_freq: 0"),
            ({"block_size": 0}, "Invalid block_size: 0"),
            ({"grafting": "adagrad"}, "Invalid grafting: 'adagrad'"),
            ({"eps": 0.0}, "Invalid eps: 0.0"),
        ],
    ),
]


# --- elementwise optimizers (issue 3): Lion, LAMB, Adafactor, SophiaG ---------------
from reference.elementwise import adafactor_rule, lamb_rule, lion_rule, sophia_rule  # noqa: E402

_ADAFACTOR_DEFAULTS = dict(lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                           weight_decay=0.0, scale_parameter=True, relative_step=True, warmup_init=False)

SPECS += [
    OptimizerSpec(
        name="Lion",
        cls=descent.Lion,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.95, 0.98), weight_decay=0.1),
            dict(lr=0.02, weight_decay=0.3, maximize=True),
        ],
        group2=dict(lr=0.004, betas=(0.8, 0.9), weight_decay=0.05),
        references={"numpy": oracle(lion_rule, betas=(0.9, 0.99), weight_decay=0.0)},
        backends=("loop", "foreach", "fused"),
        converge=Convergence(lr=0.01, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2,
                             rosenbrock_lr=1e-3, rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 1.0)}, r"Invalid beta2: 1.0"),
            ({"weight_decay": -0.1}, "Invalid weight_decay: -0.1"),
        ],
    ),
    OptimizerSpec(
        name="LAMB",
        cls=descent.LAMB,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, clamp_value=1.5),
            dict(lr=0.02, weight_decay=0.05, bias_correction=False, maximize=True, eps=1e-4),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), eps=1e-5),
        references={"numpy": oracle(lamb_rule, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)},
        backends=("loop", "foreach", "fused"),
        atol=1e-11,  # norms are sums in another order
        # the step is lr * ||theta|| per tensor, so a fixed lr hovers at about that distance
        # No Rosenbrock row: from (-1.5, 2) the path passes the origin, where LAMB's step
        # (lr * ||theta|| for the one 2-vector "layer") vanishes; it stalls at (0, 0).
        converge=Convergence(lr=0.01, steps=2000, quadratic_tol=5e-2),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (1.5, 0.99)}, r"Invalid beta1: 1.5"),
            ({"eps": -1.0}, "Invalid eps: -1.0"),
            ({"clamp_value": 0.0}, "Invalid clamp_value: 0.0"),
        ],
    ),
    OptimizerSpec(
        name="Adafactor",
        cls=descent.Adafactor,
        configs=[
            dict(),
            dict(lr=0.01, relative_step=False, beta1=0.9, weight_decay=0.1),
            dict(warmup_init=True, scale_parameter=False, maximize=True, clip_threshold=0.5, decay_rate=-0.5),
        ],
        group2=dict(eps=(1e-20, 1e-2), clip_threshold=2.0),
        references={"numpy": oracle(adafactor_rule, **_ADAFACTOR_DEFAULTS)},
        backends=("loop", "foreach", "fused"),
        atol=1e-11,
        shapes=((6, 5), (5,), (0,), (4, 3), (3, 4), (2, 3, 4)),
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2,
                             rosenbrock_lr=0.01, rosenbrock_steps=5000,
                             kwargs=dict(relative_step=False, scale_parameter=False, beta1=0.9)),
        error_inputs=[
            ({"lr": -1e-3, "relative_step": False}, "Invalid lr: -0.001"),
            ({"lr": 0.01}, "Invalid lr: 0.01 with relative_step=True"),
            ({"relative_step": False}, "Invalid lr: None with relative_step=False"),
            ({"eps": (1e-30, -1.0)}, "Invalid eps2: -1.0"),
            ({"decay_rate": 0.5}, "Invalid decay_rate: 0.5"),
            ({"beta1": 1.0}, "Invalid beta1: 1.0"),
            ({"clip_threshold": 0.0}, "Invalid clip_threshold: 0.0"),
        ],
    ),
    OptimizerSpec(
        name="SophiaG",
        cls=descent.SophiaG,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.9, 0.95), rho=0.1, weight_decay=0.0, bs=64),
            dict(lr=0.02, weight_decay=0.2, maximize=True, eps=1e-12),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), rho=0.02),
        references={"numpy": oracle(sophia_rule, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1, bs=5120,
                                    eps=1e-15)},
        backends=("loop", "foreach", "fused"),
        # no Hessian refresh here: h = 0 and the step is lr * sign(m), so a small lr
        converge=Convergence(lr=0.003, steps=2000, quadratic_tol=5e-2, rosenbrock_tol=5e-2,
                             rosenbrock_lr=1e-3, rosenbrock_steps=5000, kwargs=dict(weight_decay=0.0)),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 1.0)}, r"Invalid beta2: 1.0"),
            ({"rho": -0.1}, "Invalid rho: -0.1"),
            ({"bs": 0}, "Invalid bs: 0.0"),
        ],
    ),
]


# --- optimizers of 2024 (issue 15): ADOPT, AdEMAMix, MARS, schedule-free, Prodigy -------
from reference.modern import (ProdigyReference, ademamix_rule, adopt_rule, mars_rule,  # noqa: E402
                              schedule_free_reference, soap_rule)

SPECS += [
    OptimizerSpec(
        name="ADOPT",
        cls=descent.ADOPT,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, cautious=True, clip_exponent=None),
            dict(lr=0.02, weight_decay=0.05, decouple=True, maximize=True, eps=1e-4),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), eps=1e-5),
        references={"numpy": oracle(adopt_rule, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, decouple=False,
                                    clip_exponent=0.25, cautious=False)},
        backends=("loop", "fused"),  # descent.kernels.modern (Numba) on CPU
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2,
                             rosenbrock_lr=0.1, rosenbrock_steps=5000, kwargs=dict(betas=(0.9, 0.999))),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 1.0)}, r"Invalid beta2: 1.0"),
            ({"clip_exponent": 0.0}, "Invalid clip_exponent: 0.0"),
            ({"eps": -1.0}, "Invalid eps: -1.0"),
        ],
    ),
    OptimizerSpec(
        name="AdEMAMix",
        cls=descent.AdEMAMix,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99, 0.999), alpha=5.0, t_alpha_beta3=20, weight_decay=0.1, cautious=True),
            dict(lr=0.02, t_alpha_beta3=100, maximize=True, eps=1e-6),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9, 0.99), alpha=1.0),
        references={"numpy": oracle(ademamix_rule, betas=(0.9, 0.999, 0.9999), alpha=2.0, t_alpha_beta3=None,
                                    eps=1e-8, weight_decay=0.0, cautious=False)},
        backends=("loop", "fused"),  # descent.kernels.modern (Numba) on CPU
        # the default beta3 = 0.9999 (half-life ~6900 steps) is for long stochastic runs
        converge=Convergence(lr=0.01, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2, rosenbrock_lr=0.003,
                             rosenbrock_steps=5000, kwargs=dict(betas=(0.9, 0.999, 0.99), t_alpha_beta3=100)),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 0.999)}, r"Invalid betas: \(0.9, 0.999\)"),
            ({"betas": (0.9, 0.999, 1.0)}, "Invalid beta3: 1.0"),
            ({"alpha": -1.0}, "Invalid alpha: -1.0"),
            ({"t_alpha_beta3": 0}, "Invalid t_alpha_beta3: 0"),
        ],
    ),
    OptimizerSpec(
        name="MARS",
        cls=descent.MARS,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.9, 0.99), gamma=0.1, weight_decay=0.1, cautious=True),
            dict(lr=0.02, gamma=0.0, maximize=True, eps=1e-6),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), gamma=0.05),
        references={"numpy": oracle(mars_rule, betas=(0.95, 0.99), eps=1e-8, weight_decay=0.0, gamma=0.025,
                                    cautious=False)},
        backends=("loop", "fused"),  # descent.kernels.modern (Numba) on CPU
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2, rosenbrock_lr=0.01,
                             rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (1.0, 0.99)}, r"Invalid beta1: 1.0"),
            ({"gamma": -0.1}, "Invalid gamma: -0.1"),
        ],
    ),
    OptimizerSpec(
        name="ScheduleFreeSGD",
        cls=descent.ScheduleFreeSGD,
        configs=[
            dict(lr=0.05),
            dict(lr=0.05, momentum=0.8, weight_decay=0.1, warmup_steps=10, r=1.0),
            dict(lr=0.1, weight_lr_power=1.0, maximize=True, warmup_steps=3),
        ],
        group2=dict(lr=0.01, momentum=0.5, weight_decay=0.05),
        references={"numpy": schedule_free_reference(False, momentum=0.9)},
        backends=("loop", "fused"),  # descent.kernels.modern (Numba) on CPU
        converge=Convergence(lr=0.03, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2, rosenbrock_lr=0.01,
                             rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"momentum": 0.0}, r"Invalid momentum: 0.0"),
            ({"momentum": 1.0}, r"Invalid momentum: 1.0"),
            ({"warmup_steps": -1}, "Invalid warmup_steps: -1"),
            ({"weight_decay": -1.0}, "Invalid weight_decay: -1.0"),
        ],
    ),
    OptimizerSpec(
        name="ScheduleFreeAdamW",
        cls=descent.ScheduleFreeAdamW,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=10, r=0.5),
            dict(lr=0.02, weight_lr_power=0.0, maximize=True, eps=1e-6, warmup_steps=4),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), eps=1e-5),
        references={"numpy": schedule_free_reference(True, betas=(0.9, 0.999), eps=1e-8)},
        backends=("loop", "fused"),  # descent.kernels.modern (Numba) on CPU
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=1e-2, rosenbrock_tol=5e-2, rosenbrock_lr=0.02,
                             rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.0, 0.999)}, r"Invalid beta1: 0.0"),
            ({"betas": (0.9, 1.0)}, r"Invalid beta2: 1.0"),
            ({"r": -1.0}, "Invalid r: -1.0"),
        ],
    ),
    OptimizerSpec(
        name="Prodigy",
        cls=descent.Prodigy,
        configs=[
            dict(),
            dict(betas=(0.8, 0.99), weight_decay=0.1, use_bias_correction=True, growth_rate=1.5, d0=1e-4),
            dict(lr=0.5, weight_decay=0.05, decouple=False, safeguard_warmup=True, maximize=True, beta3=0.9),
        ],
        group2=dict(lr=0.25, eps=1e-6),
        references={"numpy": ProdigyReference},
        atol=1e-10,  # d is a ratio of sums taken in another order
        converge=Convergence(lr=1.0, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=1e-1, rosenbrock_steps=5000),
        error_inputs=_COMMON_ERRORS + [
            ({"d0": 0.0}, r"Invalid d0: 0.0"),
            ({"growth_rate": 0.5}, "Invalid growth_rate: 0.5"),
            ({"betas": (0.9, 1.5)}, "Invalid beta2: 1.5"),
        ],
    ),
]

SPECS += [
    OptimizerSpec(
        name="SOAP",
        cls=descent.SOAP,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.9, 0.99), shampoo_beta=0.9, weight_decay=0.1, precondition_frequency=3,
                 max_precond_dim=5),
            dict(lr=0.02, weight_decay=0.0, correct_bias=False, maximize=True, precondition_frequency=4, eps=1e-6,
                 cautious=True),
        ],
        group2=dict(lr=0.003, betas=(0.5, 0.9), precondition_frequency=2),
        references={"numpy": oracle(soap_rule, betas=(0.95, 0.95), shampoo_beta=None, eps=1e-8, weight_decay=0.01,
                                    precondition_frequency=10, max_precond_dim=10000, correct_bias=True)},
        shapes=((6, 5), (5,), (0,), (4, 3), (3, 4), (3, 2, 2)),  # (3, 4) as a matrix
        state_skip=("gg_left", "gg_right", "q_left", "q_right"),  # compared in tests/test_modern_optim.py
        atol=1e-9,  # eigenvectors and QR from another LAPACK call order; 1/(sqrt(v)+eps) amplifies round-off
        low_precision={torch.float32: 5e-3, torch.bfloat16: 6e-2},
        converge=Convergence(lr=0.05, steps=1000, quadratic_tol=5e-2, rosenbrock_tol=5e-2, rosenbrock_lr=0.02,
                             rosenbrock_steps=5000, kwargs=dict(weight_decay=0.0)),
        error_inputs=_COMMON_ERRORS + [
            ({"betas": (0.9, 1.0)}, "Invalid beta2: 1.0"),
            ({"shampoo_beta": 1.5}, "Invalid shampoo_beta: 1.5"),
            ({"precondition_frequency": 0}, "Invalid precondition_frequency: 0"),
            ({"max_precond_dim": 0}, "Invalid max_precond_dim: 0"),
        ],
    ),
]
