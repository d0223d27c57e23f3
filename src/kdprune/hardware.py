"""Where a computation ran, in words: the processor or accelerator, and the thread or process count.

Float results depend on all three (the CPU's vector units, the GPU model, the number of threads or ranks
that sum a reduction), so every training stage records :func:`describe` per epoch and every result row names
the machines of the stages it counts.
"""

from __future__ import annotations

import platform

import torch


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device | str, world_size: int = 1) -> str:
    """``"AMD EPYC, 2 threads"``, ``"NVIDIA H200"``, ``"4 × NVIDIA H200"`` (DDP over 4 ranks)."""
    device = torch.device(device)
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        n = torch.get_num_threads()
        what = f"{cpu_name()}, {n} thread{'s' if n != 1 else ''}"
    else:
        what = device.type
    return f"{world_size} × {what}" if world_size > 1 else what


def machines(values) -> list[str]:
    """The distinct machines in ``values`` (strings, lists of strings or None), in first-seen order."""
    out: dict[str, None] = {}
    for v in values:
        for m in ([v] if isinstance(v, str) else (v or ())):
            out.setdefault(m, None)
    return list(out)
