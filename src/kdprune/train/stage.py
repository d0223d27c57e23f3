"""Resumable training stages, and the device and data they run on.

A *stage* is one training job in its own folder. It is finished when its ``metrics.json`` exists
(written last, atomically, after ``model.safetensors`` and ``masks.safetensors``); a finished stage is
loaded, never re-run. An unfinished stage resumes from its ``checkpoint.pt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from kdprune import distributed
from kdprune.data import ImageDataset, TensorLoader, load_dataset
from kdprune.errors import UserError
from kdprune.hardware import describe, machines
from kdprune.io import read_json, remove_stale_temps, save_tensors, write_json
from kdprune.losses import Objective
from kdprune.models.weights import read_state_dict
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.prunable import unwrap
from kdprune.train import Callback, OptimSpec, Trainer

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.is_distributed() and dist_backend_is_nccl():
        name = f"cuda:{distributed.local_rank()}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return dev


@dataclass
class Env:
    device: torch.device
    data: ImageDataset
    train: TensorLoader
    test: TensorLoader
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def with_train_seed(self, seed: int) -> "Env":
        """This environment with the training order and augmentation drawn from ``seed``."""
        import copy
        from dataclasses import replace

        train = copy.copy(self.train)
        train.seed = seed
        return replace(self, train=train)

    def score_loader(self, seed: int) -> TensorLoader:
        """Shuffled, augmented training batches from a stream of their own (not the training order)."""
        mean, std = self.data.channel_stats()
        return TensorLoader(self.data.train_x, self.data.train_y, self.train.batch_size, mean=mean, std=std,
                            train=True, pad=self.data.pad, flip=self.data.flip, seed=seed + 7919,
                            device=self.device, rank=self.rank, world_size=self.world_size,
                            channels_last=self.train.channels_last)


def dist_backend_is_nccl() -> bool:
    import torch.distributed as dist

    return dist.get_backend() == "nccl"


def make_env(cfg) -> Env:
    device = resolve_device(cfg.device)
    rank, world = distributed.rank(), distributed.world_size()
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the {world} processes")
    batch = cfg.batch_size // world
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, image_size=getattr(cfg, "image_size", None))
    if getattr(cfg, "image_size", None):  # a no-op where the reader decoded at that size (folder)
        data = data.resized(cfg.image_size)
    mean, std = data.channel_stats()
    common = dict(mean=mean, std=std, device=device, rank=rank, world_size=world, channels_last=cfg.channels_last)
    train = TensorLoader(data.train_x, data.train_y, batch, train=True, pad=data.pad, flip=data.flip,
                         seed=cfg.seed, **common)
    test = TensorLoader(data.test_x, data.test_y, max(batch, 256), train=False, **common)
    return Env(device, data, train, test, rank, world)


def optim_spec(cfg, lr: float | None = None) -> OptimSpec:
    return OptimSpec(optimizer=cfg.optimizer, lr=cfg.lr if lr is None else lr, momentum=cfg.momentum,
                     nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                     grad_clip=cfg.grad_clip)


def is_finished(stage_dir: Path) -> bool:
    return (stage_dir / "metrics.json").is_file()


def run_training_stage(
    stage_dir: Path,
    model: nn.Module,
    objective: Objective,
    optim: OptimSpec,
    epochs: int,
    env: Env,
    cfg,
    *,
    desc: str,
    teacher: nn.Module | None = None,
    masks: MaskSet | None = None,
    callbacks: list[Callback] | tuple = (),
    extra: dict | None = None,
) -> dict:
    """Train ``model`` in ``stage_dir`` (or load it if that stage finished); returns the stage metrics."""
    plain = unwrap(model)
    if env.is_main:  # a killed run's half-written temporaries (never a finished file) go first
        remove_stale_temps(stage_dir)
    if distributed.synced(lambda: is_finished(stage_dir)):
        plain.load_state_dict(read_state_dict(stage_dir / "model.safetensors"))
        if masks is not None:
            masks.bind(model).apply_()
        return read_json(stage_dir / "metrics.json")
    trainer = Trainer(model, objective, optim, epochs, env.train, env.test, teacher=teacher, masks=masks,
                      out_dir=stage_dir, amp=cfg.amp, compile=cfg.compile, channels_last=cfg.channels_last,
                      progress=cfg.progress, desc=desc,
                      callbacks=callbacks, is_main=env.is_main)
    result = trainer.fit(resume=True)
    history = result.pop("history")
    metrics = {
        "top1": result["test_top1"],
        "test_loss": result["test_loss"],
        "epochs": epochs,
        "objective": objective.name,
        "wall_seconds": sum(h["seconds"] for h in history),
        "hardware": machines(h.get("hardware") for h in history) or [describe(env.device, env.world_size)],
        "images_fwd_bwd": trainer.images_seen + trainer.extra_images,
        "teacher_forwards": trainer.teacher_forwards,
        "history": history,
        **(extra or {}),
    }
    if masks is not None:
        metrics["sparsity"] = sparsity_report(plain, list(masks.masks))
    if env.is_main:
        save_tensors(stage_dir / "model.safetensors", plain.state_dict(), {"format": "kdprune-model-v1"})
        if masks is not None:
            masks.save(stage_dir / "masks.safetensors")
        write_json(stage_dir / "metrics.json", metrics)
        for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
            if (stage_dir / name).exists():
                os.remove(stage_dir / name)
    distributed.barrier()
    return metrics
