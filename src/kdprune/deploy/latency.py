"""Wall-clock latency of models on this machine: interleaved repeats and medians, so that drift during the
measurement hits every model alike and the ratios between them hold even on a noisy machine."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn as nn


def interleaved_times(fns: dict, repeats: int = 5, warmup: int = 1, inner: int = 1) -> dict:
    """Time each function ``repeats`` times, interleaved (A B A B ...), each sample ``inner`` calls;
    returns every sample (seconds per call) per key, in round order, so ratios can be taken per round."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t0) / inner)
    return times


def median_seconds(fns: dict, repeats: int = 5, warmup: int = 1) -> dict:
    """Time each function ``repeats`` times, interleaved (A B A B ...); returns the median per key."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats, warmup).items()}


def eager_forward(model: nn.Module, x: torch.Tensor, channels_last: bool = False) -> Callable[[], None]:
    """One inference-mode forward of ``model`` on ``x`` (synchronised on CUDA), as a timing callable; with
    ``channels_last`` the model and ``x`` are put in that memory format first (kdprune's training default)."""
    from kdprune.train.layout import as_layout, set_layout

    set_layout(model.eval(), channels_last)
    x = as_layout(x, channels_last)

    def run() -> None:
        with torch.inference_mode():
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()

    return run

