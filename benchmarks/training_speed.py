"""kdprune's training epochs against a bare eager NCHW loop, on the same model, data and batch.

For each image size (default 16 and 32), interleaved in one run (A B C ... A B C ...), medians of the repeats:

* ``bare NCHW``: the reference, the simplest loop one would write: pre-normalised float NCHW batches in a
  random order, forward, cross-entropy, backward, SGD step (momentum 0.9, Nesterov, weight decay 5e-4). No
  augmentation, no masks, no bookkeeping.
* ``kdprune dense``: the engine's own epoch (``Trainer._train_epoch``) on a ``TensorLoader`` with its
  on-device augmentation (random crop and flip), in kdprune's default layout (channels_last on the CPU);
* ``kdprune masked``: the same at 90% sparsity (masks applied to gradients and weights every step);
* ``kdprune KD``: the same with the CA-KLD objective against a frozen ResNet-56 teacher;
* ``kdprune dense NCHW``: the engine with ``channels_last=False`` (``--no-channels-last``: the old path).
* with ``--eval``: ``evaluate`` in either layout (inference-mode forward of the test split).

Prints images/s and ratios to the bare loop (goal: kdprune dense >= 1.25x at 16x16 and 32x32) and to
kdprune's dense epoch (masked and KD cost, to compare with the NCHW path's).

    python benchmarks/training_speed.py [--sizes 16,32] [--batch 128] [--batches 12] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_seconds, synthetic_split  # noqa: E402

from kdprune.data import TensorLoader
from kdprune.hardware import cpu_name
from kdprune.losses import CrossEntropy, Distillation
from kdprune.models import create_model
from kdprune.pruning import MaskSet, global_masks, prunable_parameters
from kdprune.train import OptimSpec, Trainer, evaluate

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def bare_loop(arch: str, x: torch.Tensor, y: torch.Tensor, batch: int):
    """The reference: plain eager PyTorch in NCHW, no augmentation."""
    torch.manual_seed(0)
    model = create_model(arch, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    xf = (x.float() - mean) / std
    gen = torch.Generator().manual_seed(0)

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(len(y) // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss = nn.functional.cross_entropy(model(xf[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def kdprune_epoch(arch: str, x, y, batch: int, size: int, *, channels_last: bool, sparsity: float = 0.0,
                  teacher: str | None = None):
    loader = TensorLoader(x, y, batch, mean=MEAN, std=STD, train=True, pad=max(1, size // 8), flip=True,
                          channels_last=channels_last)
    torch.manual_seed(0)
    model = create_model(arch, 10)
    masks = None
    if sparsity:
        masks = MaskSet(global_masks({k: p.detach().abs() for k, p in prunable_parameters(model).items()}, sparsity))
    objective, t = CrossEntropy(), None
    if teacher:
        objective, t = Distillation(), create_model(teacher, 10).eval()
    trainer = Trainer(model, objective, OptimSpec(), 1, loader, None, teacher=t, masks=masks, progress=False,
                      channels_last=channels_last)
    return lambda: trainer._train_epoch(0)


def eval_pass(arch: str, x, y, channels_last: bool):
    loader = TensorLoader(x, y, 256, mean=MEAN, std=STD, channels_last=channels_last)
    model = create_model(arch, 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return lambda: evaluate(model, loader)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=12, help="steps per timed epoch (at 16x16; half at 32x32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval", action="store_true", help="also time evaluate() in both layouts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.arch}, batch "
          f"{args.batch}; medians of {args.repeats} interleaved repeats")
    for size in (int(s) for s in args.sizes.split(",")):
        steps = args.batches if size <= 16 else max(2, args.batches // 2)
        x, y = synthetic_split(args.batch * steps, size)
        fns = {
            "bare NCHW": bare_loop(args.arch, x, y, args.batch),
            "kdprune dense": kdprune_epoch(args.arch, x, y, args.batch, size, channels_last=True),
            "kdprune masked": kdprune_epoch(args.arch, x, y, args.batch, size, channels_last=True, sparsity=0.9),
            "kdprune KD": kdprune_epoch(args.arch, x, y, args.batch, size, channels_last=True, teacher="resnet56"),
            "kdprune dense NCHW": kdprune_epoch(args.arch, x, y, args.batch, size, channels_last=False),
            "kdprune masked NCHW": kdprune_epoch(args.arch, x, y, args.batch, size, channels_last=False,
                                                 sparsity=0.9),
            "kdprune KD NCHW": kdprune_epoch(args.arch, x, y, args.batch, size, channels_last=False,
                                             teacher="resnet56"),
        }
        if args.eval:
            fns["evaluate channels_last"] = eval_pass(args.arch, x, y, True)
            fns["evaluate NCHW"] = eval_pass(args.arch, x, y, False)
        sec = median_seconds(fns, args.repeats)
        n = args.batch * steps
        print(f"\n{size}x{size}, {steps} steps per epoch")
        for k, s in sec.items():
            print(f"  {k:24s} {n / s:8.1f} images/s  {sec['bare NCHW'] / s:5.2f}x bare NCHW")
        print(f"  kdprune dense / bare NCHW speed: {sec['bare NCHW'] / sec['kdprune dense']:.2f}x  (goal >= 1.25)")
        for layout, sfx in (("channels_last", ""), ("NCHW", " NCHW")):
            d = sec["kdprune dense" + sfx]
            print(f"  {layout:13s}: masked / dense time {sec['kdprune masked' + sfx] / d:.3f}, "
                  f"KD / dense time {sec['kdprune KD' + sfx] / d:.3f}")
        if args.eval:
            print(f"  evaluate channels_last / NCHW speed: {sec['evaluate NCHW'] / sec['evaluate channels_last']:.2f}x")


if __name__ == "__main__":
    main()
