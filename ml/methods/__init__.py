"""The fine-tuning methods, one module each, found by name in one registry.

A method owns everything that differs between methods (peft's tuners are the model): its learning
rates and other defaults per stage, how it builds a new model and continues a saved one, what it adds
to each training step (AdaLoRA's regulariser and rank allocation), and how a saved model is loaded
to score notes alone or served. Nothing outside `ml/methods/` branches on a method's name, and an
unknown name fails here, at lookup.

Importing this package is light; `method_for` imports the method's module (torch, peft) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ml.errors import UserError
from ml.vocabulary import METHODS

if TYPE_CHECKING:
    from ml.methods.base import Method

# name -> module holding its `METHOD`; one line per method.
_MODULES = {
    "full": "ml.methods.full",
    "lora": "ml.methods.lora",
    "adalora": "ml.methods.adalora",
}
assert tuple(_MODULES) == METHODS, "ml.vocabulary.METHODS and the registry must list the same methods"


class UnknownMethodError(UserError):
    """A model or request names a method this service does not have."""

    code = "unknown_method"


def method_for(name: str) -> Method:
    """The method called `name`; an unknown name is refused, never sent down another method's path."""
    module = _MODULES.get(name)
    if module is None:
        raise UnknownMethodError(
            f"unknown fine-tuning method {str(name)[:40]!r}; expected one of {', '.join(METHODS)}"
        )
    return importlib.import_module(module).METHOD


def stage_defaults(name: str, stage: int) -> dict[str, Any]:
    """The method's own defaults for a stage (1, or 2 for every continued fine-tune)."""
    from ml.config import METHOD_STAGED

    defaults = method_for(name).stage_defaults[min(stage, 2)]
    assert set(defaults) <= set(METHOD_STAGED), f"{name} sets a default ml.config.METHOD_STAGED does not list"
    return {key: list(value) if isinstance(value, list) else value for key, value in defaults.items()}
