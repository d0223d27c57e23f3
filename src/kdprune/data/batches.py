"""What kdprune accepts as data: any re-iterable of ``(inputs, labels)`` batches with a length (a kdprune
TensorLoader, a ``torch.utils.data.DataLoader``, a list of tensor pairs); batches go to the model's device."""

from __future__ import annotations

import torch
import torch.nn as nn

from kdprune.errors import UserError, first_line


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


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def probe_batch(data, what: str, models: dict[str, nn.Module | None]) -> None:
    """Put one batch of ``data`` through each model (eval mode, no gradients, two images) before any training,
    so that a wrong batch format, dtype, channel count or class count is one line naming the argument or the
    model at fault instead of a torch error after minutes of work. ``models``: ``{"student": m, ...}``."""
    try:
        batch = next(iter(data))
    except StopIteration:
        raise UserError(f"{what} is empty") from None
    if isinstance(batch, dict):
        raise UserError(f"{what} yields dict batches (keys {', '.join(map(str, batch))}); kdprune takes (inputs, "
                        "labels) tuples: wrap the loader, e.g. ((b['image'], b['label']) for b in ...) as a list")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not all(torch.is_tensor(t) for t in batch[:2]):
        raise UserError(f"{what} must yield (inputs, labels) pairs of tensors, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if not x.is_floating_point():
        raise UserError(f"{what}: the inputs are {str(x.dtype).removeprefix('torch.')}; models take float images "
                        "(normalise them first; kdprune.TensorLoader does it for uint8 images)")
    if y.is_floating_point() or y.dim() != 1 or len(y) != len(x):
        raise UserError(f"{what}: the labels must be a 1-d integer tensor with one class index per input, got "
                        f"{str(y.dtype).removeprefix('torch.')} of shape {tuple(y.shape)} for {len(x)} inputs")
    outputs = {}
    for name, model in models.items():
        if model is None:
            continue
        conv = _first_conv(model)
        if conv is not None and x.dim() == 4 and conv.in_channels != x.shape[1]:
            raise UserError(f"{name}: its first convolution takes {conv.in_channels} input channels, {what} has "
                            f"{x.shape[1]} (inputs of shape {tuple(x.shape)})")
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(x[:2].to(model_device(model)))
        except Exception as e:  # noqa: BLE001 -- any failure of a user's model on a user's batch
            raise UserError(f"{name} fails on a batch of {what} (inputs {tuple(x.shape)}, "
                            f"{str(x.dtype).removeprefix('torch.')}): {type(e).__name__}: {first_line(e)}") from None
        finally:
            model.train(was)
        if not torch.is_tensor(out) or out.dim() != 2:
            raise UserError(f"{name} must return logits of shape [batch, classes], got "
                            f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
        outputs[name] = out.shape[1]
        top = int(y.max()) if len(y) else 0
        if top >= out.shape[1] or (len(y) and int(y.min()) < 0):
            raise UserError(f"{name} has {out.shape[1]} outputs but {what} has label {top if top >= out.shape[1] else int(y.min())}: "
                            f"its classifier must have one output per class")
    if len(set(outputs.values())) > 1:
        raise UserError("the models disagree on the number of classes: "
                        + ", ".join(f"{k} has {v} outputs" for k, v in outputs.items()))
