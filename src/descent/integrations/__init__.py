"""Callbacks for the trainers people use: transformers' ``Trainer`` and Lightning.

Both run a :class:`descent.Monitor` on every optimizer step, the doctor
(:func:`descent.diagnose`) at the end and at the first non-finite loss or gradient, and
optionally :func:`descent.find_lr` before training. Importing one needs its package
(``transformers`` or ``lightning``); this module imports them only when a name is used.

Example:
    >>> from descent.integrations import DescentLightningCallback  # doctest: +SKIP
    >>> trainer = lightning.Trainer(callbacks=[DescentLightningCallback()])  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["DescentTrainerCallback", "DescentLightningCallback", "RunDoctor"]

_WHERE = {"DescentTrainerCallback": (".hf", "transformers"), "DescentLightningCallback": (".lightning", "lightning"),
          "RunDoctor": ("._core", None)}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'descent.integrations' has no attribute {name!r}")
    module, package = _WHERE[name]
    try:
        return getattr(import_module(module, __name__), name)
    except ModuleNotFoundError as exc:
        if package and exc.name and exc.name.split(".")[0] == package:
            raise ImportError(f"descent.integrations.{name} needs the {package} package "
                              f"(pip install {package})") from None
        raise
