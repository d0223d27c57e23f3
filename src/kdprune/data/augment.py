"""Batched, on-device augmentation: random crop with zero padding and horizontal flip in one gather."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator,
                     share: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Random ``pad``-padded crop (and flip with p=0.5) of every image of a batch ``x`` [N, C, H, W].

    Offsets and flips are drawn from ``generator`` (a CPU generator, so a seed gives the same
    augmentation on every device), then applied as two ``gather`` calls: no per-image Python.
    ``share=(total, start, step)``: the draws are made for a batch of ``total`` images and ``x`` is the one at
    positions ``start::step`` (a DDP rank's share of the global batch: the augmentation one process gives it).
    """
    n, c, h, w = x.shape
    if pad <= 0 and not flip:
        return x
    total, start, step = share or (n, 0, 1)
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[start::step]
    ox = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[start::step]
    cols = ox[:, None] + torch.arange(w)[None, :]
    if flip:
        flipped = (torch.rand(total, generator=generator) < 0.5)[start::step]
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    rows = (oy[:, None] + torch.arange(h)[None, :]).to(dev, non_blocking=True)
    cols = cols.to(dev, non_blocking=True)
    xp = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, xp.shape[3]))
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))
