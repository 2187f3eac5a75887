"""descent's optimizers: ``torch.optim.Optimizer`` subclasses on one shared step loop."""

from ._base import Optimizer
from .adagrad import Adagrad
from .adam import Adam, Adam4bit, Adam8bit, AdamW, AdamW4bit, AdamW8bit
from .rmsprop import RMSprop
from .sgd import SGD, SGD8bit
from .kfac import KFAC
from .lbfgs import LBFGS
from .muon import Muon
from .shampoo import Shampoo
from .adafactor import Adafactor
from .lamb import LAMB
from .lion import Lion, Lion8bit
from .sophia import SophiaG
from .adopt import ADOPT
from .ademamix import AdEMAMix
from .mars import MARS
from .prodigy import Prodigy
from .soap import SOAP
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD, recalibrate_batchnorm

from .registry import create_optimizer, list_optimizers, register_alias, register_preset

register_preset("sgd", SGD, momentum=0.9, nesterov=True, weight_decay=5e-4,
                description="SGD, Nesterov momentum 0.9, wd 5e-4 (timm's 'sgd')")
register_preset("sgd-plain", SGD, description="plain SGD", lrs={"convex": 0.1, "function": 1e-2})
register_preset("momentum", SGD, momentum=0.9, description="SGD, heavy-ball momentum 0.9")
register_preset("muon", Muon, adamw_lr=3e-3, description="Muon on matrices, AdamW 3e-3 on the rest")
register_alias("adamw8bit", AdamW8bit, description="AdamW, 8-bit states (bitsandbytes' AdamW8bit)")
register_alias("adam8bit", Adam8bit, description="Adam, 8-bit states (bitsandbytes' Adam8bit)")
register_alias("lion8bit", Lion8bit, description="Lion, 8-bit state (bitsandbytes' Lion8bit)")
register_alias("sgd8bit", SGD8bit, momentum=0.9, description="SGD, momentum 0.9 in 8 bits (bitsandbytes' SGD8bit)")
register_alias("adamw4bit", AdamW4bit, description="AdamW, 4-bit states (torchao's AdamW4bit)")
register_alias("adam4bit", Adam4bit, description="Adam, 4-bit states (torchao's Adam4bit)")

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
__all__ += ["Muon", "Shampoo", "KFAC", "LBFGS"]
__all__ += ["Lion", "LAMB", "Adafactor", "SophiaG"]
__all__ += ["create_optimizer", "list_optimizers"]
__all__ += ["ADOPT", "AdEMAMix", "MARS", "Prodigy", "SOAP", "ScheduleFreeSGD", "ScheduleFreeAdamW",
            "recalibrate_batchnorm"]


def _discover() -> list[str]:
    """Import every public module of this package, so that an optimizer file registers itself
    (and is exported) without an import line here; returns the class names not listed above."""
    import importlib
    import pkgutil

    from .registry import _REGISTRY

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    found = {e.cls.__name__: e.cls for e in _REGISTRY.values()}
    globals().update(found)
    return sorted(set(found) - set(__all__))


__all__ += _discover()
