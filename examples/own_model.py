"""kdprune on your own models: a depthwise-separable student, a small CNN teacher, a torch DataLoader.

    python examples/own_model.py [--out DIR] [--epochs N]

Real data (scikit-learn's 8x8 handwritten digits), nothing from kdprune's model registry: the teacher is
trained with an ordinary PyTorch loop, then ``kdprune.prune`` runs the paper's recipe on the student
(KD training under the teacher, teacher-guided scores, one global threshold at 80% sparsity, KD
retraining with the mask held) and the pruned model is exported dense, sparse and as ONNX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import kdprune


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.pointwise(self.depthwise(x))))


class Student(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(DepthwiseSeparable(32, 64), DepthwiseSeparable(64, 64))
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def teacher_net(classes: int = 10) -> nn.Module:
    layers, cin = [], 1
    for cout in (64, 128, 128):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def loaders(batch_size: int = 64):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    x = (x - x[train].mean()) / x[train].std()  # normalised with the training split's statistics only
    shuffle = torch.Generator().manual_seed(1)
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True, generator=shuffle),
            DataLoader(TensorDataset(x[test], y[test]), batch_size=256))


def train_teacher(teacher: nn.Module, data: DataLoader, epochs: int) -> None:
    """Your own training code: kdprune only needs the trained teacher."""
    opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        for x, y in data:
            loss = nn.functional.cross_entropy(teacher(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/own-model", help="folder for the exported files")
    ap.add_argument("--epochs", type=int, default=6, help="teacher, distillation and retraining epochs each")
    args = ap.parse_args()
    torch.manual_seed(0)
    train, test = loaders()
    teacher, student = teacher_net(), Student()
    train_teacher(teacher, train, args.epochs)
    print(f"teacher: top-1 {kdprune.evaluate(teacher, test)['top1']:.2f}%")

    result = kdprune.prune(student, teacher, train, sparsity=0.8, test_data=test, distill_epochs=args.epochs,
                           epochs=args.epochs, retrain="kd", lr=0.05)
    m = result.metrics
    print(f"student after KD: top-1 {m['dense_top1']:.2f}%; pruned to {m['sparsity']:.2%}: "
          f"{m['pruned_top1']:.2f}% before retraining, {m['top1']:.2f}% after")
    zeros = {n: int((p == 0).sum()) for n, p in student.named_parameters() if n in result.masks.masks}
    print(f"depthwise conv weights pruned: {zeros['blocks.0.depthwise.weight']} of "
          f"{student.blocks[0].depthwise.weight.numel()}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for fmt, name in (("dense", "student.safetensors"), ("sparse", "student.sparse.safetensors"),
                      ("onnx", "student.onnx")):
        r = kdprune.export(student, out / name, format=fmt, input_shape=(1, 8, 8))
        extra = f", ONNX Runtime vs PyTorch max |diff| {r['onnx_max_abs_diff']:.1e}" if fmt == "onnx" else ""
        print(f"exported {fmt}: {r['output']} ({r['bytes']:,} bytes{extra})")


if __name__ == "__main__":
    main()
