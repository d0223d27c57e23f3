"""Helpers for the benchmark scripts: interleaved repeats, medians, a synthetic CIFAR-sized split."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_seconds(fns: dict[str, Callable[[], None]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Time each function ``repeats`` times, interleaved (A B A B ...) so drift hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def synthetic_split(n: int, size: int, channels: int = 3, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y
