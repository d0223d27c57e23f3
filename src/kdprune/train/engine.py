"""The training engine: one small loop for dense training, distillation and masked retraining.

Per step: forward (teacher under ``inference_mode`` when the objective needs it), loss, backward,
``masks.mask_grads_()``, optional gradient clipping, ``optimizer.step()``, ``masks.apply_()``, scheduler
step. AMP (bf16 where supported, else fp16 with a grad scaler) on CUDA. The model (and the teacher) and
every batch are in the ``channels_last`` memory format by default (see :mod:`kdprune.train.layout`);
``torch.compile`` is optional. Running loss and accuracy stay on the device (no host sync per step).
After each epoch: evaluation, an atomic checkpoint (model, optimizer, scheduler, scaler, masks,
history) and ``metrics.jsonl``. ``fit(resume=True)`` continues from the last checkpoint; because the
loader's order and augmentation depend only on ``(seed, epoch)``, a resumed run on the CPU reproduces the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from kdprune.data.batches import check_batches, data_device, to_device
from kdprune.choices import OPTIMIZERS, SCHEDULES
from kdprune.errors import UserError, check_choice
from kdprune.io import write_text
from kdprune.losses import Objective
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import unwrap
from kdprune.checkpoint import load_checkpoint, save_checkpoint
from kdprune.train.layout import as_layout, default_channels_last, is_channels_last, set_layout
from kdprune.train.progress import Progress


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class OptimSpec:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | multistep | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip: float | None = None
    # Where the schedule starts, as a fraction of its course: 0 = from the peak (training, restarting);
    # 1 - R/E = learning-rate rewinding, the last R of E training epochs' rates (Renda et al. 2020).
    start_fraction: float = 0.0


def make_optimizer(params, spec: OptimSpec) -> torch.optim.Optimizer:
    check_choice("optimizer", spec.optimizer, OPTIMIZERS)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                           nesterov=spec.nesterov and spec.momentum > 0, weight_decay=spec.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, spec: OptimSpec, steps_per_epoch: int, epochs: int):
    total = max(1, steps_per_epoch * epochs)
    warm = spec.warmup_epochs * steps_per_epoch
    check_choice("schedule", spec.schedule, SCHEDULES)
    marks = sorted(int(round(m * total)) for m in spec.milestones)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        start = spec.start_fraction
        if spec.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            t = start + (1.0 - start) * t if start else t
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if spec.schedule == "multistep":
            if start:
                frac = start + (1.0 - start) * step / total
                return spec.gamma ** sum(frac >= m - 1e-12 for m in spec.milestones)
            return spec.gamma ** sum(step >= m for m in marks)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _autocast(device: torch.device, amp: bool):
    if not amp or device.type != "cuda":
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp: bool = False) -> dict:
    """Top-1 accuracy (percent) and mean cross-entropy of ``model`` on ``loader`` (any iterable of
    ``(inputs, labels)`` batches: a kdprune TensorLoader, a DataLoader, a list). Batches are put in the
    model's memory format (channels_last when its weights are)."""
    was = model.training
    model.eval()
    device = data_device(loader, model)
    cl = is_channels_last(model)
    ctx, _ = _autocast(device, amp)
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    n = 0
    with torch.inference_mode():
        for batch in loader:
            x, y = to_device(batch, device)[:2]
            with ctx:
                logits = model(as_layout(x, cl))
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.numel()
    model.train(was)
    correct_t, loss_t, n_t = _reduce_sums(device, correct, loss_sum, n)
    return {"top1": 100.0 * correct_t / max(n_t, 1), "loss": loss_t / max(n_t, 1)}


def _reduce_sums(device, *values) -> list[float]:
    """``values`` (tensors or numbers) summed over DDP ranks when running distributed, in one all-reduce."""
    import torch.distributed as dist

    t = torch.stack([v.float() if torch.is_tensor(v) else torch.tensor(float(v), device=device) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


class Callback:
    """Hook points of the loop; subclass and override what you need."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict) -> None:
        pass


class Trainer:
    """Trains ``model`` on ``train_loader`` (any re-iterable of ``(inputs, labels)`` batches with a length:
    a kdprune TensorLoader, a ``torch.utils.data.DataLoader``, a list) and evaluates on ``test_loader``
    (or not, when it is None) after every epoch."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optim: OptimSpec,
        epochs: int,
        train_loader,
        test_loader,
        *,
        teacher: nn.Module | None = None,
        masks: MaskSet | None = None,
        out_dir: str | Path | None = None,
        amp: bool = True,
        compile: bool = False,
        channels_last: bool | None = None,
        progress: bool | None = None,
        desc: str = "train",
        callbacks: list[Callback] | tuple = (),
        is_main: bool = True,
    ):
        if objective.needs_teacher and teacher is None:
            raise UserError(f"objective {objective.name} needs a teacher")
        check_batches(train_loader, "the training data")
        if test_loader is not None:
            check_batches(test_loader, "the test data")
        device = data_device(train_loader, model)
        # The layout is set before DDP, the optimizer and the masks see the parameters.
        self.channels_last = default_channels_last(device) if channels_last is None else bool(channels_last)
        set_layout(unwrap(model), self.channels_last)
        if teacher is not None:
            set_layout(teacher, self.channels_last)
        from kdprune import distributed

        if distributed.is_distributed() and not isinstance(model, nn.parallel.DistributedDataParallel):
            ids = [self.device_index(device)] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model  # possibly DDP-wrapped; unwrap(model) is the plain module
        self.objective, self.optim_spec, self.epochs = objective, optim, int(epochs)
        self.train_loader, self.test_loader = train_loader, test_loader
        self.device = device
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.masks = masks.bind(model) if masks is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.amp = amp
        self.progress = progress
        self._progress = Progress(desc, 0, None, enabled=False)
        self.desc = desc
        self.callbacks = list(callbacks)
        self.is_main = is_main
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], optim)
        self.scheduler = make_scheduler(self.optimizer, optim, len(train_loader), self.epochs)
        self.autocast, self.scaler = _autocast(self.device, amp)
        self.step_fn = torch.compile(model) if compile else model
        self.history: list[dict] = []
        self.start_epoch = 0
        self.images_seen = 0
        self.teacher_forwards = 0
        self.extra_images = 0  # images an objective pushes through the model beyond the batch (CS-KD pairs)
        if self.masks is not None:
            self.masks.apply_()
        if hasattr(objective, "attach"):
            if not hasattr(train_loader, "batches_with_index"):
                raise UserError(f"the {objective.name} objective needs a kdprune TensorLoader (it indexes samples)")
            objective.attach(train_loader)

    @staticmethod
    def device_index(device: torch.device) -> int:
        return device.index if device.index is not None else torch.cuda.current_device()

    # ------------------------------------------------------------------------------- checkpointing
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir else None

    def state_dict(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "masks": self.masks.state_dict() if self.masks else None,
            "history": self.history,
            "counters": {"images_seen": self.images_seen, "teacher_forwards": self.teacher_forwards,
                         "extra_images": self.extra_images},
            "objective_state": self.objective.state_dict() if hasattr(self.objective, "state_dict") else None,
            "optim_spec": asdict(self.optim_spec),
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.masks is not None:
            saved = state.get("masks")
            if saved is None or set(saved) != set(self.masks.masks) or any(
                    not torch.equal(saved[k].bool().cpu(), m.cpu()) for k, m in self.masks.masks.items()):
                raise UserError(f"the checkpoint in {self.out_dir} was made with other masks; "
                                f"delete it or use another --out")
            self.masks.apply_()
            self.masks.mask_optimizer_state_(self.optimizer)
        self.history = list(state["history"])
        self.images_seen = state["counters"]["images_seen"]
        self.teacher_forwards = state["counters"]["teacher_forwards"]
        self.extra_images = state["counters"].get("extra_images", 0)
        if state.get("objective_state") is not None:
            self.objective.load_state_dict(state["objective_state"])
        self.start_epoch = int(state["epoch"]) + 1

    def _write_epoch(self, epoch: int) -> None:
        import json

        from kdprune.distributed import barrier

        if self.out_dir and self.is_main:
            save_checkpoint(self.checkpoint_path, self.state_dict(epoch))
            write_text(self.out_dir / "metrics.jsonl",
                       "".join(json.dumps(h, sort_keys=True) + "\n" for h in self.history))
        barrier()

    # ---------------------------------------------------------------------------------------- loop
    def _train_epoch(self, epoch: int) -> dict:
        model, opt, masks = self.model, self.optimizer, self.masks
        model.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        own_forward = hasattr(self.objective, "forward_loss")  # self-distillation objectives
        batches = self.train_loader.batches_with_index() if own_forward else self.train_loader
        if own_forward:
            self.objective.start_epoch(epoch, self.epochs)
        cl = self.channels_last
        extra = teacher_n = 0
        for batch in batches:
            batch = to_device(batch, self.device)
            if own_forward:
                x, y, idx = batch
                x = as_layout(x, cl)
                with self.autocast:
                    loss, logits = self.objective.forward_loss(self.step_fn, x, y, idx)
                extra += self.objective.last_extra_images
            else:
                x, y = batch[:2]
                x = as_layout(x, cl)
                teacher_logits = None
                if self.objective.needs_teacher:
                    with torch.inference_mode(), self.autocast:
                        teacher_logits = self.teacher(x)
                    teacher_logits = teacher_logits.clone()
                    teacher_n += y.numel()
                with self.autocast:
                    logits = self.step_fn(x)
                    loss = self.objective(logits, y, teacher_logits)
            opt.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(opt)
            else:
                loss.backward()
            if masks is not None:
                masks.mask_grads_()
            if self.optim_spec.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), self.optim_spec.grad_clip)
            if self.scaler:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            if masks is not None:
                masks.apply_()
            self.scheduler.step()
            loss_sum += loss.detach().float() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            n += y.numel()
            self._progress.step()
        if own_forward:
            self.objective.end_epoch()
        # compute counters are global too: under DDP every rank's shard counts, as one process would count it
        correct_t, loss_t, n_t, extra_t, teacher_t = _reduce_sums(self.device, correct, loss_sum, n, extra, teacher_n)
        self.images_seen += int(n_t)
        self.extra_images += int(extra_t)
        self.teacher_forwards += int(teacher_t)
        return {"train_loss": loss_t / max(n_t, 1), "train_top1": 100.0 * correct_t / max(n_t, 1)}

    def fit(self, resume: bool = False) -> dict:
        """Train for the remaining epochs; returns the last epoch's metrics (with the history)."""
        from kdprune.distributed import synced_exists, world_size
        from kdprune.hardware import describe

        where = describe(self.device, world_size())  # per epoch: a resumed run may finish on another machine
        if resume and self.checkpoint_path and synced_exists(self.checkpoint_path):
            self.load_state_dict(load_checkpoint(self.checkpoint_path, map_location=self.device))
        if self.masks is not None:
            self.masks.mask_optimizer_state_(self.optimizer)
        self._progress = Progress(self.desc, self.epochs, len(self.train_loader), self.progress, enabled=self.is_main)
        self._progress.start(self.start_epoch)
        try:
            for epoch in range(self.start_epoch, self.epochs):
                t0 = time.perf_counter()
                metrics = self._train_epoch(epoch)
                if not math.isfinite(metrics["train_loss"]):
                    raise TrainingDiverged(
                        f"{self.desc}: the loss became {metrics['train_loss']} in epoch {epoch + 1}; "
                        f"the last good checkpoint is kept (lower --lr or set --grad-clip)")
                metrics.update({f"test_{k}": v for k, v in self._evaluate().items()})
                metrics.update({"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                                "seconds": time.perf_counter() - t0, "hardware": where})
                self.history.append(metrics)
                self._progress.epoch_end(epoch + 1, metrics)
                for cb in self.callbacks:  # side files first, then the checkpoint commits the epoch
                    cb.on_epoch_end(self, epoch, metrics)
                self._write_epoch(epoch)
        finally:
            self._progress.close()
        if not self.history:  # zero epochs: still report where the model stands
            m = self._evaluate()
            return {"test_top1": m["top1"], "test_loss": m["loss"], "epoch": 0, "history": []}
        return {**self.history[-1], "history": self.history}

    def _evaluate(self) -> dict:
        if self.test_loader is None:
            return {"top1": None, "loss": None}
        return evaluate(unwrap(self.model), self.test_loader, self.amp)
