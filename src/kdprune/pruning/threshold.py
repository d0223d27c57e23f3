"""Turning scores into masks: one global threshold, or one per layer, removing exactly k weights.

Scores are compared in float32. ``k = round(sparsity * n)`` weights with the lowest scores are removed;
among weights whose score equals the k-th smallest, those with the lowest flat index (layers in module
order, then row-major within a layer) are removed first, so the result is deterministic.
"""

from __future__ import annotations

import torch

from kdprune.errors import UserError


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not (0.0 < s < 1.0):  # also rejects NaN
        raise UserError(f"sparsity must lie strictly between 0 and 1, got {sparsity}")
    return s


def _keep_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask removing exactly the ``k`` smallest entries of ``flat``, ties by index."""
    n = flat.numel()
    keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return keep
    if k >= n:
        return torch.zeros_like(keep)
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    kth = flat.kthvalue(k).values
    below = flat < kth
    n_below = int(below.sum())
    ties = torch.nonzero(flat == kth, as_tuple=False).flatten()  # ascending index order
    keep[below] = False
    keep[ties[: k - n_below]] = False
    return keep


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers: exactly ``round(sparsity * total)`` weights removed."""
    check_sparsity(sparsity)
    names = list(scores)
    flat = torch.cat([scores[n].detach().float().flatten() for n in names])
    keep = _keep_mask(flat, int(round(sparsity * flat.numel())))
    return split_flat(keep, {n: scores[n].shape for n in names})


def split_flat(flat: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Cut a tensor flattened over layers (in ``shapes``' order) back into per-layer tensors."""
    out, start = {}, 0
    for n, shape in shapes.items():
        size = torch.Size(shape).numel()
        out[n] = flat[start:start + size].view(shape)
        start += size
    return out


def layerwise_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """The same fraction removed from every layer (each layer thresholded on its own)."""
    check_sparsity(sparsity)
    out = {}
    for n, s in scores.items():
        flat = s.detach().float().flatten()
        out[n] = _keep_mask(flat, int(round(sparsity * flat.numel()))).view_as(s)
    return out
