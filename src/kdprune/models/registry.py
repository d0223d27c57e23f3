"""A small model registry in the style of timm: a decorator registers a constructor by name, with the
model's metadata (as timm's ``pretrained_cfg``): its stem convolution, its classifier and the input it is
designed for. :func:`create_model` puts that metadata on the model (``model.kdprune_cfg``), so pruning
(``--no-prune-first``/``--no-prune-last``, channel pruning's untouchable layers) and export read the layer
names instead of guessing them; a user's ``module:factory`` model has none, and the first Conv2d and last
Linear stand in.

Besides the registered names, an architecture may be a ``module:factory`` string naming any importable
callable that returns an ``nn.Module`` (the user's own model); the current working directory is importable.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from kdprune.errors import UserError, first_line


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    constructor: Callable[..., nn.Module]
    first_conv: str | None = None  # the stem convolution's module name
    classifier: str | None = None  # the final Linear's module name
    input_size: tuple[int, int, int] | None = None  # (channels, height, width) the architecture is designed for

    def cfg(self, in_channels: int) -> dict | None:
        """The metadata a built model carries (``model.kdprune_cfg``); None for a user's model."""
        if self.first_conv is None:
            return None
        size = self.input_size[1:] if self.input_size else None
        return {"arch": self.name, "first_conv": self.first_conv, "classifier": self.classifier,
                "input_size": (in_channels, *size) if size else None}


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(family: str, description: str, *, first_conv: str = "conv1", classifier: str = "fc",
                   input_size: tuple[int, int, int] = (3, 32, 32)):
    def deco(fn: Callable[..., nn.Module]):
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, family, description, fn, first_conv, classifier, input_size)
        return fn

    return deco


def registered(name: str | None) -> ModelInfo | None:
    """The registry entry of ``name``, or None (a user's ``module:factory`` or an unknown name)."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def model_cfg(model: nn.Module) -> dict:
    """The metadata :func:`create_model` put on ``model`` ({} for a model built otherwise)."""
    return getattr(model, "kdprune_cfg", None) or {}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """A registered architecture, or a user's ``module:factory`` (imported and checked to be callable here,
    called only by :func:`create_model`)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and ":" in name:
        return _user_model(name)
    raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}, "
                    "or module:factory for your own model")


def _user_model(spec: str) -> ModelInfo:
    """Import ``module:factory`` (attributes may be dotted: ``module:Class.build``) and check it is callable."""
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr or ":" in attr:
        raise UserError(f"architecture {spec!r}: expected module:factory, e.g. mymodels:my_cnn")
    cwd = os.getcwd()
    if cwd not in sys.path:  # a mymodels.py next to where kdprune runs is importable, as with uvicorn/gunicorn
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"architecture {spec!r}: cannot import module {module_name!r} ({first_line(e)})") from None
    except Exception as e:  # a SyntaxError or any error raised while the module runs
        raise UserError(f"architecture {spec!r}: importing module {module_name!r} raised "
                        f"{type(e).__name__}: {first_line(e)}") from None
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name] + attr.split(".")[:i]) if i else f"module {module_name!r}"
            raise UserError(f"architecture {spec!r}: {owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"architecture {spec!r}: {attr} is not callable (type {type(obj).__name__}); name a "
                        "function or class that returns an nn.Module")

    def construct(num_classes: int, in_channels: int = 3) -> nn.Module:
        kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
                  if _accepts(obj, k)}
        try:
            model = obj(**kwargs)
        except UserError:
            raise
        except Exception as e:
            passed = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            raise UserError(f"architecture {spec!r}: calling {attr}({passed}) raised "
                            f"{type(e).__name__}: {first_line(e)}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"architecture {spec!r}: {attr} returned {type(model).__name__}, not an nn.Module")
        return model

    return ModelInfo(spec, "user", f"user model {spec}", construct)


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes ``name=`` as a keyword (a ``**kwargs`` parameter takes any)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): pass what the data needs
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in params)


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered architecture as a plain ``nn.Module``."""
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    info = model_info(name)
    model = info.constructor(num_classes=num_classes, in_channels=in_channels)
    cfg = info.cfg(in_channels)
    if cfg is not None:
        model.kdprune_cfg = cfg
    return model
