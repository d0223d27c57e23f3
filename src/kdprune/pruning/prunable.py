"""Prunable weights: the ``weight`` of every Conv2d and Linear layer (biases and BN are never pruned)."""

from __future__ import annotations

import torch.nn as nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers, whose parameter names are canonical."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def prunable_parameters(model: nn.Module, prune_first: bool = True, prune_last: bool = True) -> dict[str, nn.Parameter]:
    """Canonical name -> weight for every prunable layer, in module order.

    ``prune_first=False`` leaves the first conv dense, ``prune_last=False`` the last linear layer.
    """
    model = unwrap(model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not prune_first:
        first = next((i for i, (_, m) in enumerate(layers) if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            layers.pop(first)
    if not prune_last:
        last = next((i for i in range(len(layers) - 1, -1, -1) if isinstance(layers[i][1], nn.Linear)), None)
        if last is not None:
            layers.pop(last)
    return {f"{name}.weight": m.weight for name, m in layers}
