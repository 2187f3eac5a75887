"""The math of every descent optimizer, written once.

Each function applies one step of one algorithm to one parameter tensor, in place,
given its gradient and state tensors; it holds no state of its own and reads no
flags beyond its arguments. The optimizer classes in :mod:`descent.optim` call these
on their ``"loop"`` backend; every faster backend (torch's fused kernels, descent's
Numba kernels) is tested against them.
"""

from .adagrad import adagrad
from .adam import adam
from .rmsprop import rmsprop
from .sgd import sgd
from .muon import gram_newton_schulz, muon, muon_batched, newton_schulz
from .shampoo import matrix_inverse_root, shampoo
from . import kfac
from .adafactor import adafactor, adafactor_lr
from .lamb import lamb, lamb_direction, trust_ratio
from .lion import lion
from .sophia import sophia, sophia_hessian_ema
from .cautious import cautious
from .adopt import adopt
from .ademamix import ademamix, ademamix_schedule
from .mars import mars
from .prodigy import prodigy_accumulate, prodigy_apply, prodigy_d
from .soap import soap, soap_eigenbasis, soap_matrix_view, soap_nd, soap_shape
from .schedule_free import (schedule_free_adamw, schedule_free_sgd, schedule_free_to_eval, schedule_free_to_train,
                            schedule_free_weight)

__all__ = ["adagrad", "adam", "rmsprop", "sgd"]
__all__ += ["muon", "muon_batched", "newton_schulz", "gram_newton_schulz", "shampoo", "matrix_inverse_root", "kfac"]
__all__ += ["lion", "lamb", "lamb_direction", "trust_ratio", "adafactor", "adafactor_lr", "sophia", "sophia_hessian_ema"]
__all__ += ["cautious", "adopt", "ademamix", "ademamix_schedule", "mars", "prodigy_accumulate", "prodigy_apply",
            "prodigy_d", "schedule_free_weight", "schedule_free_sgd", "schedule_free_adamw", "schedule_free_to_eval",
            "schedule_free_to_train", "soap", "soap_eigenbasis", "soap_matrix_view", "soap_nd", "soap_shape"]
