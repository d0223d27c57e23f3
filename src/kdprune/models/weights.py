"""Loading weights into a registered architecture, with one clear error when they do not fit."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from kdprune.checkpoint import load_checkpoint
from kdprune.errors import UserError
from kdprune.io import is_safetensors, load_tensors


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def _wrapper_prefix(state: dict) -> str | None:
    return next((p for p in _WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None)


def strip_wrappers(state: dict[str, torch.Tensor], until: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The state_dict of the model inside DDP / torch.compile wrappers (a prefix every key shares); with
    ``until`` (a model's keys), only as many prefixes as it takes to reach those keys."""
    while (until is None or set(state) != until) and (prefix := _wrapper_prefix(state)):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path, unwrap: bool = True) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``model.safetensors``, a kdprune ``checkpoint.pt``, a ``.pt``/``.pth``
    state_dict (loaded with ``weights_only=True``), any safetensors file, or a run folder (its
    ``model.safetensors``); ``unwrap``: without the prefixes of DDP / torch.compile wrappers."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    if is_safetensors(p):
        state = load_tensors(p)
        return strip_wrappers(state) if unwrap else state
    obj = load_checkpoint(p)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{p} holds no state_dict of tensors")
    # Accept checkpoints saved from DDP or torch.compile wrappers.
    return strip_wrappers(obj) if unwrap else obj


def load_weights(model: nn.Module, path: str | Path, arch: str, num_classes: int) -> nn.Module:
    state = read_state_dict(path, unwrap=False)
    own = model.state_dict()
    state = strip_wrappers(state, until=set(own))  # a model's own keys may start like a wrapper's
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    what = f"checkpoint {path} does not match {arch} with {num_classes} classes"
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise UserError(f"{what}: {', '.join(detail)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(f"{what}: {k} has shape {tuple(state[k].shape)} in the checkpoint, "
                            f"{tuple(v.shape)} in the model")
    model.load_state_dict(state)
    return model
