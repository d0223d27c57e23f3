"""Masked training step vs dense step (target <= 1.05), and KD step vs plain step.

Runs the engine's own epoch loop (``Trainer._train_epoch``) on the same batches for: dense CE, masked CE
at 90% sparsity, and KD (CA-KLD with a frozen teacher). Prints medians of interleaved repeats and ratios.

    python benchmarks/masked_step.py [--arch resnet20] [--teacher resnet56] [--size 16] [--batch 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_seconds, synthetic_split  # noqa: E402

from kdprune.data import TensorLoader
from kdprune.losses import CrossEntropy, Distillation
from kdprune.models import create_model
from kdprune.pruning import MaskSet, global_masks, prunable_parameters
from kdprune.train import OptimSpec, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8, help="batches per timed epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    x, y = synthetic_split(args.batch * args.batches, args.size)
    loader = TensorLoader(x, y, args.batch, mean=[0.5] * 3, std=[0.25] * 3, train=True, pad=2, flip=True,
                          device=dev, channels_last=args.channels_last)
    test = TensorLoader(x[:args.batch], y[:args.batch], args.batch, mean=[0.5] * 3, std=[0.25] * 3, train=False,
                        device=dev)

    def model():
        torch.manual_seed(0)
        m = create_model(args.arch, 10).to(dev)
        return m.to(memory_format=torch.channels_last) if args.channels_last else m

    teacher = create_model(args.teacher, 10).to(dev).eval()
    dense = Trainer(model(), CrossEntropy(), OptimSpec(), 1, loader, test, progress=False)
    m = model()
    masks = MaskSet(global_masks({k: p.detach().abs() for k, p in prunable_parameters(m).items()}, 0.9))
    masked = Trainer(m, CrossEntropy(), OptimSpec(), 1, loader, test, masks=masks, progress=False)
    kd = Trainer(model(), Distillation(), OptimSpec(), 1, loader, test, teacher=teacher, progress=False)

    def epoch(t):
        def run():
            t._train_epoch(0)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return run

    sec = median_seconds({"dense": epoch(dense), "masked": epoch(masked), "kd": epoch(kd)}, args.repeats)
    imgs = args.batch * args.batches
    print(f"{args.arch} {args.size}x{args.size} batch {args.batch} on {dev} ({torch.get_num_threads()} threads), "
          f"median of {args.repeats} interleaved repeats of {args.batches} steps")
    for k, s in sec.items():
        print(f"  {k:7s} {imgs / s:9.1f} images/s")
    print(f"masked / dense step time: {sec['masked'] / sec['dense']:.3f}  (target <= 1.05)")
    print(f"KD ({args.teacher} teacher) / plain step time: {sec['kd'] / sec['dense']:.3f}")


if __name__ == "__main__":
    main()
