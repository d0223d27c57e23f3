"""How many CPU threads torch uses.

Two OpenMP threads on two cores that another process also uses spin-wait for each other: a training
epoch then takes 3x longer than alone (measured, ``docs/getting-started.md``), while one thread on the one free core is
not slowed at all. kdprune therefore counts the cores that are idle when it starts (from ``/proc/stat``
over a quarter of a second) and uses that many threads, at least one, so a busy machine slows it in
proportion instead of collapsing. ``--threads N`` or ``OMP_NUM_THREADS=N`` fix the number. Float results
depend on the thread count, so runs are bit-for-bit reproducible for a given count: pass ``--threads``
for that across machines and loads.
"""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_cores(sample_seconds: float = 0.25) -> float | None:
    """Idle cores of the whole machine over ``sample_seconds`` (None where /proc/stat is unavailable)."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(sample_seconds)
    b = _cpu_times()
    if b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def auto_threads() -> int:
    """The idle cores among those this process may use, at least one."""
    cores = usable_cores()
    idle = idle_cores()
    return cores if idle is None else max(1, min(cores, int(idle + 0.5)))


def choose_threads(requested: int | None = None) -> int:
    """``requested``, else ``OMP_NUM_THREADS``, else :func:`auto_threads`."""
    if requested is not None:
        return max(1, int(requested))
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return auto_threads()


def set_threads(requested: int | None = None) -> int:
    import torch

    n = choose_threads(requested)
    torch.set_num_threads(n)
    return n
