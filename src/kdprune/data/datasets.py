"""Dataset readers. Every reader returns an :class:`ImageDataset` of uint8 NCHW tensors.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes), installed
  with the package, so the default needs no download. Split 1,437 train / 360 test with a fixed seed.
* ``cifar10`` / ``cifar100``: the official python-pickle releases (``cifar-10-batches-py/``,
  ``cifar-100-python/``), read exactly as published; ``--data-dir`` may name the folder or its parent.
* ``tinyimagenet``: the official ``tiny-imagenet-200/`` layout, decoded once with Pillow and cached as
  a uint8 ``.npy`` pair next to the data. The val split is the test split (test labels are not public).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdprune.errors import UserError


@dataclass
class ImageDataset:
    name: str
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    pad: int  # random-crop padding used for training augmentation
    flip: bool  # random horizontal flip for training augmentation

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.train_x.to(torch.float64) / 255.0
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()

    def resized(self, size: int) -> "ImageDataset":
        """The same images at ``size`` x ``size`` (area averaging when shrinking, bilinear when growing),
        done once; the crop padding scales with the image (CIFAR's 4 pixels at 32 become 2 at 16)."""
        import torch.nn.functional as F

        if size == self.image_size:
            return self
        mode = "area" if size < self.image_size else "bilinear"

        def one(x: torch.Tensor) -> torch.Tensor:
            out = []
            for chunk in x.split(4096):  # bounded memory on the full training set
                y = F.interpolate(chunk.float(), size=(size, size), mode=mode)
                out.append(y.round_().clamp_(0, 255).to(torch.uint8))
            return torch.cat(out)

        pad = max(1, round(self.pad * size / self.image_size)) if self.pad else 0
        return ImageDataset(self.name, one(self.train_x), self.train_y, one(self.test_x), self.test_y,
                            self.num_classes, pad, self.flip)

    def validate(self) -> "ImageDataset":
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.shape[0] == 0:
                raise UserError(f"{self.name}: the {split} split is empty")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise UserError(f"{self.name}: {split} images must be uint8 [N, C, H, W], got {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise UserError(f"{self.name}: {split} has {x.shape[0]} images but {tuple(y.shape)} labels")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise UserError(
                    f"{self.name}: {split} labels must lie in [0, {self.num_classes - 1}], "
                    f"found [{int(y.min())}, {int(y.max())}]"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise UserError(f"{self.name}: train images {tuple(self.train_x.shape[1:])} and test images "
                            f"{tuple(self.test_x.shape[1:])} differ in shape")
        return self


# ---------------------------------------------------------------------------------------------- digits

def load_digits_dataset(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    return ImageDataset(
        "digits", torch.from_numpy(images[train]), torch.from_numpy(labels[train]),
        torch.from_numpy(images[test]), torch.from_numpy(labels[test]), 10, pad=1, flip=False,
    ).validate()


# ----------------------------------------------------------------------------------------------- CIFAR

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("__builtin__", "bytes"), ("builtins", "bytes"),  # how Python 3 pickles an empty array's buffer
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"missing CIFAR file {path}")
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: expected uint8 data of shape [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _find_folder(data_dir: str | None, folder: str, dataset: str, marker: str) -> Path:
    """The dataset folder: ``data_dir`` itself or ``data_dir/folder``, recognised by a marker file."""
    if not data_dir:
        raise UserError(f"{dataset} needs --data-dir (the {folder}/ folder or its parent); "
                        f"add --download to fetch it")
    root = Path(data_dir)
    for cand in (root / folder, root):
        if (cand / marker).exists():
            return cand
    raise UserError(f"no {folder}/ folder at {root} (no {marker} found there or in {folder}/); "
                    f"pass the folder or its parent, or add --download")


def _load_cifar(data_dir: str | None, download: bool, hundred: bool) -> ImageDataset:
    name = "cifar100" if hundred else "cifar10"
    folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
    if download:
        from kdprune.data.download import download_dataset

        download_dataset(name, data_dir)
    root = _find_folder(data_dir, folder, name, "test" if hundred else "test_batch")
    if hundred:
        tx, ty = _read_cifar_batch(root / "train", b"fine_labels")
        vx, vy = _read_cifar_batch(root / "test", b"fine_labels")
    else:
        parts = [_read_cifar_batch(root / f"data_batch_{i}", b"labels") for i in range(1, 6)]
        tx = np.concatenate([p[0] for p in parts])
        ty = np.concatenate([p[1] for p in parts])
        vx, vy = _read_cifar_batch(root / "test_batch", b"labels")
    return ImageDataset(name, torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(vx),
                        torch.from_numpy(vy), 100 if hundred else 10, pad=4, flip=True).validate()


def load_cifar10(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    return _load_cifar(data_dir, download, hundred=False)


def load_cifar100(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    return _load_cifar(data_dir, download, hundred=True)


# --------------------------------------------------------------------------------------- Tiny ImageNet

_TINY_CACHE = "kdprune-cache-v1"


def _decode_images(paths: list[Path], size: int, desc: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img", leave=False, disable=None)):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))  # some Tiny ImageNet JPEGs are grayscale
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot decode image {p} ({e})") from None
        if arr.shape != (size, size, 3):
            raise UserError(f"{p}: expected a {size}x{size} image, got {arr.shape[1]}x{arr.shape[0]}")
        out[i] = arr.transpose(2, 0, 1)
    return out


def load_tinyimagenet(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    if download:
        from kdprune.data.download import download_dataset

        download_dataset("tinyimagenet", data_dir)
    root = _find_folder(data_dir, "tiny-imagenet-200", "tinyimagenet", "wnids.txt")
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise UserError(f"missing {wnids_file}")
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    if not wnids:
        raise UserError(f"{wnids_file} lists no classes")
    index = {w: i for i, w in enumerate(wnids)}

    cache = root / f"{_TINY_CACHE}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in ("tx", "ty", "vx", "vy")}
        except Exception as e:
            raise UserError(f"corrupt cache {cache} ({e}); delete it to decode the images again") from None
    else:
        train_paths, train_labels = [], []
        for w in wnids:
            imgs = sorted((root / "train" / w / "images").glob("*.JPEG"))
            if not imgs:
                raise UserError(f"no training images in {root / 'train' / w / 'images'}")
            train_paths += imgs
            train_labels += [index[w]] * len(imgs)
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise UserError(f"missing {ann}")
        val_paths, val_labels = [], []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise UserError(f"{ann}:{n}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt")
            val_paths.append(root / "val" / "images" / fields[0])
            val_labels.append(index[fields[1]])
        arrays = {
            "tx": _decode_images(train_paths, 64, "decoding Tiny ImageNet train"),
            "ty": np.asarray(train_labels, dtype=np.int64),
            "vx": _decode_images(val_paths, 64, "decoding Tiny ImageNet val"),
            "vy": np.asarray(val_labels, dtype=np.int64),
        }
        try:
            from kdprune.io import atomic_path

            with atomic_path(cache) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
        except OSError:
            pass  # a read-only data folder: decode again next time
    return ImageDataset(
        "tinyimagenet", torch.from_numpy(arrays["tx"]), torch.from_numpy(arrays["ty"]),
        torch.from_numpy(arrays["vx"]), torch.from_numpy(arrays["vy"]), len(wnids), pad=8, flip=True,
    ).validate()


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": load_digits_dataset,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tinyimagenet": load_tinyimagenet,
}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> ImageDataset:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name](data_dir=data_dir, download=download)
