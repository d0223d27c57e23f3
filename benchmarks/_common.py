"""Helpers for the benchmark scripts: interleaved repeats, medians, a synthetic CIFAR-sized split."""

from __future__ import annotations

import torch

from kdprune.deploy.latency import median_seconds  # noqa: F401  (the benchmarks' timer)


def synthetic_split(n: int, size: int, channels: int = 3, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y
