"""What kdprune accepts as data: any re-iterable of ``(inputs, labels)`` batches with a length (a kdprune
TensorLoader, a ``torch.utils.data.DataLoader``, a list of tensor pairs); batches go to the model's device."""

from __future__ import annotations

import torch
import torch.nn as nn

from kdprune.errors import UserError


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def data_device(batches, model: nn.Module) -> torch.device:
    """Where batches are computed: the loader's device (kdprune's TensorLoader), else the model's."""
    dev = getattr(batches, "device", None)
    return torch.device(dev) if dev is not None else model_device(model)


def to_device(batch, device: torch.device):
    """``(x, y, ...)`` moved to ``device`` (a no-op for tensors already there, e.g. a TensorLoader's)."""
    try:
        return tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)
    except TypeError:
        raise UserError(f"expected batches of (inputs, labels) tensors, got {type(batch).__name__}") from None


def check_batches(batches, what: str = "data") -> None:
    """Batches must be re-iterable with a length (a list, a DataLoader, a TensorLoader); not a generator."""
    if iter(batches) is batches:
        raise UserError(f"{what} is a one-shot iterator; pass something that can be iterated every epoch "
                        "(a list of (x, y) batches, a DataLoader or a kdprune TensorLoader)")
    try:
        len(batches)
    except TypeError:
        raise UserError(f"{what} has no len(); pass a list of (x, y) batches, a DataLoader or a TensorLoader") from None
