"""descent's optimizers: ``torch.optim.Optimizer`` subclasses on one shared step loop."""

from ._base import Optimizer
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD
from .kfac import KFAC
from .lbfgs import LBFGS
from .muon import Muon
from .shampoo import Shampoo
from .adafactor import Adafactor
from .lamb import LAMB
from .lion import Lion
from .sophia import SophiaG

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
__all__ += ["Muon", "Shampoo", "KFAC", "LBFGS"]
__all__ += ["Lion", "LAMB", "Adafactor", "SophiaG"]
