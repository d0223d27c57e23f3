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

    ``prune_first=False`` leaves the stem conv dense, ``prune_last=False`` the classifier: the layers the
    model's registry metadata names (:func:`stem_and_classifier`).
    """
    model = unwrap(model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first, last = stem_and_classifier(model)
    skip = {n for n, keep in ((first, prune_first), (last, prune_last)) if n is not None and not keep}
    return {f"{name}.weight": m.weight for name, m in layers if name not in skip}


def stem_and_classifier(model: nn.Module) -> tuple[str | None, str | None]:
    """The module names of the stem convolution and the classifier: from the model's registry metadata
    (``model.kdprune_cfg``), else (a user's model) the first Conv2d and the last Linear."""
    from kdprune.models.registry import model_cfg

    model = unwrap(model)
    cfg = model_cfg(model)
    if cfg.get("first_conv") and cfg.get("classifier"):
        return cfg["first_conv"], cfg["classifier"]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)
