"""Masks as tensors we own, keyed by canonical parameter names; the model's modules stay plain.

A :class:`MaskSet` is bound to a model with :meth:`MaskSet.bind`. The engine then calls, every step,
``mask_grads_()`` before ``optimizer.step()`` and ``apply_()`` after it, and calls
``mask_optimizer_state_(opt)`` once when an optimizer (or its resumed state) meets the masks. With the
weight, its gradient and its optimizer state all zero, SGD (momentum, nesterov, L2 weight decay), Adam
and AdamW leave a pruned weight at exactly zero; re-applying the mask after the step makes that hold for
any optimizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from kdprune.errors import UserError
from kdprune.io import load_tensors, save_tensors
from kdprune.pruning.prunable import unwrap


class MaskSet:
    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = {k: v.detach().to(torch.bool) for k, v in masks.items()}
        self._params: list[nn.Parameter] = []
        self._fmasks: list[torch.Tensor] = []

    # ------------------------------------------------------------------ binding and the hot-path ops
    def bind(self, model: nn.Module) -> "MaskSet":
        """Resolve every mask to its parameter in ``model`` (checking names and shapes)."""
        plain = unwrap(model)
        params = dict(plain.named_parameters())
        missing = [k for k in self.masks if k not in params]
        if missing:
            raise UserError(f"masks do not match the model: no parameter named {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        for k, m in self.masks.items():
            if tuple(params[k].shape) != tuple(m.shape):
                raise UserError(f"masks do not match the model: {k} has shape {tuple(params[k].shape)}, "
                                f"mask has {tuple(m.shape)}")
        self._params = [params[k] for k in self.masks]
        self.masks = {k: m.to(params[k].device) for k, m in self.masks.items()}
        # float masks in each parameter's own strides (channels_last or not): the foreach multiply's fast path
        self._fmasks = [torch.empty_like(p.detach()).copy_(m) for m, p in zip(self.masks.values(), self._params)]
        return self

    def _bound(self) -> None:
        if not self._params and self.masks:
            raise RuntimeError("this MaskSet is not bound to a model: call masks.bind(model) first")

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned weight in place (after :meth:`bind`)."""
        self._bound()
        if self._params:
            torch._foreach_mul_(self._params, self._fmasks)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        self._bound()
        grads, masks = [], []
        for p, m in zip(self._params, self._fmasks):
            if p.grad is not None:
                grads.append(p.grad)
                masks.append(m)
        if grads:
            torch._foreach_mul_(grads, masks)

    @torch.no_grad()
    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight optimizer state (momentum buffers, Adam moments) of pruned weights."""
        self._bound()
        for p, m in zip(self._params, self._fmasks):
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(m.to(v.dtype))

    # ------------------------------------------------------------------------------ statistics and IO
    def density(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)

    def digest(self) -> str:
        """SHA-256 of the masks (names, shapes, bits): equal digests mean identical masks."""
        import hashlib

        h = hashlib.sha256()
        for k, m in self.masks.items():
            h.update(f"{k}{tuple(m.shape)}".encode())
            h.update(m.cpu().to(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        save_tensors(path, {k: m.to(torch.uint8) for k, m in self.masks.items()}, {"format": "kdprune-masks-v1"})

    @classmethod
    def load(cls, path: str | Path) -> "MaskSet":
        tensors = load_tensors(path)
        for k, v in tensors.items():
            if v.dtype not in (torch.uint8, torch.bool) or (v.numel() and int(v.max()) > 1):
                raise UserError(f"{path}: mask {k!r} is not a 0/1 tensor")
        return cls(tensors)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: m.to(torch.uint8).cpu() for k, m in self.masks.items()}


def sparsity_report(model: nn.Module, names: list[str] | None = None) -> dict:
    """Zeros among prunable weights (global and per layer), counted on the weights themselves.

    Also reports whole-model figures, since papers differ on what they count: total vs non-zero
    parameters over every parameter (biases and BN included) and the compression ratio total/non-zero.
    """
    from kdprune.pruning.prunable import prunable_parameters

    plain = unwrap(model)
    params = dict(plain.named_parameters())
    prunable = prunable_parameters(plain) if names is None else {n: params[n] for n in names}
    layers, zeros, total = {}, 0, 0
    for n, p in prunable.items():
        z = int((p.detach() == 0).sum())
        layers[n] = {"params": p.numel(), "zeros": z, "density": 1 - z / p.numel()}
        zeros += z
        total += p.numel()
    all_params = sum(p.numel() for p in params.values())
    nonzero = sum(int((p.detach() != 0).sum()) for p in params.values())
    return {
        "sparsity": zeros / max(total, 1),
        "prunable_params": total,
        "prunable_zeros": zeros,
        "total_params": all_params,
        "nonzero_params": nonzero,
        "compression_ratio": all_params / max(nonzero, 1),
        "layers": layers,
    }
