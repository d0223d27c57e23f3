"""A small model registry in the style of timm: a decorator registers a constructor by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from kdprune.errors import UserError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    constructor: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(family: str, description: str):
    def deco(fn: Callable[..., nn.Module]):
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, family, description, fn)
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered architecture as a plain ``nn.Module``."""
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    return model_info(name).constructor(num_classes=num_classes, in_channels=in_channels)
