"""Tensor-resident batched augmentation vs a torch DataLoader with per-image transforms (target >= 3x).

Both produce normalised, randomly cropped (4-pixel zero padding) and flipped float batches from the same
uint8 CIFAR-sized images; the DataLoader does it per image in ``__getitem__`` as a torchvision pipeline
would (kdprune does not depend on torchvision), with 0 and 2 worker processes.

    python benchmarks/augmentation.py [--n 10000] [--batch 128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_seconds, synthetic_split  # noqa: E402

from kdprune.data import TensorLoader

MEAN = torch.tensor([0.49, 0.48, 0.45]).view(3, 1, 1)
STD = torch.tensor([0.25, 0.24, 0.26]).view(3, 1, 1)


class PerImage(torch.utils.data.Dataset):
    def __init__(self, x, y, pad=4):
        self.x, self.y, self.pad = x, y, pad

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i].float() / 255.0
        h, w = img.shape[-2:]
        p = F.pad(img, (self.pad,) * 4)
        oy, ox = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        img = p[:, oy:oy + h, ox:ox + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img - MEAN) / STD, self.y[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    x, y = synthetic_split(args.n, 32)
    ours = TensorLoader(x, y, args.batch, mean=MEAN.flatten().tolist(), std=STD.flatten().tolist(), train=True,
                        pad=4, flip=True)
    ds = PerImage(x, y)

    def drain(it):
        def run():
            for xb, _ in it():
                pass
        return run

    fns = {
        "tensor-resident": drain(lambda: ours),
        "DataLoader w=0": drain(lambda: torch.utils.data.DataLoader(ds, args.batch, shuffle=True, drop_last=True)),
        "DataLoader w=2": drain(lambda: torch.utils.data.DataLoader(ds, args.batch, shuffle=True, drop_last=True,
                                                                    num_workers=2, persistent_workers=False)),
    }
    sec = median_seconds(fns, args.repeats)
    print(f"{args.n} images 3x32x32, batch {args.batch}, crop(pad 4)+flip+normalise, CPU, "
          f"median of {args.repeats} interleaved epochs")
    for k, s in sec.items():
        print(f"  {k:16s} {args.n / s:10.0f} images/s")
    for k in ("DataLoader w=0", "DataLoader w=2"):
        print(f"tensor-resident speed-up over {k}: {sec[k] / sec['tensor-resident']:.1f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
