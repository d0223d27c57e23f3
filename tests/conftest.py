"""Fixtures: tiny datasets written in the official on-disk formats, and an in-process CLI runner."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

# One thread count for the whole session (results depend on it): the cores idle now, as the CLI chooses,
# exported so that the CLI runs in subprocesses (kill -9 and resume, torchrun) use the same.
if not os.environ.get("OMP_NUM_THREADS"):
    from kdprune.threads import auto_threads

    os.environ["OMP_NUM_THREADS"] = str(auto_threads())
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _cifar_batch(path: Path, n: int, label_key: bytes, num_classes: int, rng: np.random.Generator) -> None:
    # The originals are Python 2 pickles of dicts with byte-string keys and a uint8 [N, 3072] array,
    # row-major R then G then B planes of 32x32.
    d = {
        b"batch_label": b"testing batch",
        label_key: [int(x) for x in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", per_batch, b"labels", 10, rng)
    _cifar_batch(folder / "test_batch", test, b"labels", 10, rng)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return folder


def write_cifar100(root: Path, train: int = 60, test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _cifar_batch(folder / "train", train, b"fine_labels", 100, rng)
    _cifar_batch(folder / "test", test, b"fine_labels", 100, rng)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f, protocol=2)
    return folder


def write_tinyimagenet(root: Path, wnids=("n01443537", "n01629819"), per_class: int = 3, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        d = folder / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            if i == 0:  # some originals are grayscale
                Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L").save(d / f"{w}_{i}.JPEG")
            else:
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")
    lines = []
    for i in range(2 * len(wnids)):
        name = f"val_{i}.JPEG"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val" / "images" / name)
        lines.append(f"{name}\t{wnids[i % len(wnids)]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def run_cli(capsys):
    """Run ``kdprune ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from kdprune.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


# Small but real pipeline settings: ResNet-20 student, ResNet-20 teacher, a few epochs on digits.
TINY_RUN = ["--teacher-arch", "resnet20", "--teacher-epochs", "2", "--student-epochs", "2",
            "--retrain-epochs", "1", "--batch-size", "128", "--score-batches", "2"]
