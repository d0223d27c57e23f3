"""What a user sees while a stage trains.

On a terminal: one bar per stage (epochs x batches) that keeps its last state when the stage ends, with
the last epoch's loss and top-1 beside it. Anywhere else (a file, CI, nohup, a cluster job): one line per
epoch on stderr, flushed at once::

    teacher resnet56: epoch 3/20  loss 0.5123  train 84.12%  top-1 91.20%  1.3 s

``mode``: ``None`` picks the bar on a terminal and lines otherwise; ``True`` forces the bar; ``False``
forces lines. Only the main process (rank 0) shows anything.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


def epoch_line(desc: str, epoch: int, epochs: int, metrics: dict) -> str:
    parts = [f"{desc}: epoch {epoch}/{epochs}"]
    if "train_loss" in metrics:
        parts.append(f"loss {metrics['train_loss']:.4f}")
    if "train_top1" in metrics:
        parts.append(f"train {metrics['train_top1']:.2f}%")
    if metrics.get("test_top1") is not None:
        parts.append(f"top-1 {metrics['test_top1']:.2f}%")
    if "seconds" in metrics:
        parts.append(f"{metrics['seconds']:.1f} s")
    return "  ".join(parts)


class Progress:
    def __init__(self, desc: str, epochs: int, steps_per_epoch: int | None, mode: bool | None = None,
                 enabled: bool = True, stream: TextIO | None = None):
        self.desc, self.epochs, self.steps = desc, epochs, steps_per_epoch
        self.stream = stream or sys.stderr
        self.enabled = enabled and epochs > 0
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.use_bar = self.enabled and (mode if mode is not None else is_tty)
        self.bar: tqdm | None = None

    def start(self, start_epoch: int) -> None:
        if self.use_bar:
            total = self.epochs * self.steps if self.steps else None
            self.bar = tqdm(total=total, initial=start_epoch * (self.steps or 0), desc=self.desc, unit="batch",
                            leave=True, file=self.stream, dynamic_ncols=True)
        elif self.enabled and start_epoch:
            print(f"{self.desc}: resuming after epoch {start_epoch}/{self.epochs}", file=self.stream, flush=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def epoch_end(self, epoch: int, metrics: dict) -> None:
        """``epoch`` counts from 1."""
        if not self.enabled:
            return
        if self.bar is not None:
            post = epoch_line("", epoch, self.epochs, {k: v for k, v in metrics.items() if k != "seconds"})
            self.bar.set_postfix_str(post.lstrip(": "), refresh=True)
        else:
            print(epoch_line(self.desc, epoch, self.epochs, metrics), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
