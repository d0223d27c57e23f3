"""DistributedDataParallel plumbing: ``torchrun --nproc_per_node N -m kdprune run ...``.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`init_from_env` then joins the process group
(NCCL on CUDA, gloo on the CPU). Rank 0 alone writes files and shows progress; every decision that
depends on files (is a stage finished?) is taken between two barriers so all ranks take the same branch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env() -> bool:
    """Join the process group when launched by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    use_cuda = torch.cuda.is_available() and os.environ.get("KDPRUNE_DIST_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def synced(check: Callable[[], T]) -> T:
    """Evaluate a file-system ``check`` on every rank between barriers; rank 0's answer is used."""
    barrier()
    value = check()
    if is_distributed():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    barrier()
    return value


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone, its result broadcast to every rank (a measurement that must be made once, so
    that every rank acts on the same answer); a UserError on rank 0 is raised on every rank."""
    from kdprune.errors import UserError

    value, error = None, None
    if rank() == 0:
        try:
            value = fn()
        except UserError as e:
            error = str(e)
    if is_distributed():
        box = [(value, error)]
        dist.broadcast_object_list(box, src=0)
        value, error = box[0]
    if error is not None:
        raise UserError(error)
    return value


def synced_exists(path: Path) -> bool:
    return synced(lambda: Path(path).exists())


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def average_(tensors: list[torch.Tensor]) -> None:
    """In-place mean of each tensor over ranks (a no-op in a single process)."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world_size())
