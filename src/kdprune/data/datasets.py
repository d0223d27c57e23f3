"""Dataset readers. Every reader returns an :class:`ImageDataset` of uint8 NCHW tensors.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes), installed
  with the package, so the default needs no download. Split 1,437 train / 360 test with a fixed seed.
* ``cifar10`` / ``cifar100``: the official python-pickle releases (``cifar-10-batches-py/``,
  ``cifar-100-python/``), read exactly as published; ``--data-dir`` may name the folder or its parent.
* ``tinyimagenet``: the official ``tiny-imagenet-200/`` layout, decoded once with Pillow and cached as
  a uint8 ``.npy`` pair next to the data. The val split is the test split (test labels are not public).
* ``folder``: your own images, ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``DIR/val/``), any
  format Pillow reads; decoded once (at ``--image-size`` when given), 1 channel when every image is
  grayscale, else RGB. The classes are the sorted train subfolder names.
"""

from __future__ import annotations

import importlib.util
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
    classes: list[str] | None = None  # class names by label, where the dataset has them

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (computed once per dataset)."""
        cached = self.__dict__.get("_stats")
        if cached is None or cached[0] is not self.train_x:
            x = self.train_x.to(torch.float64) / 255.0
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
            del x
            cached = self.__dict__["_stats"] = (self.train_x, mean.tolist(), std.tolist())
        return list(cached[1]), list(cached[2])

    def describe(self) -> dict:
        """What a run folder's ``dataset.json`` records: enough to feed the model new images."""
        mean, std = self.channel_stats()
        return {"dataset": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size, "mean": mean, "std": std,
                "classes": list(self.classes) if self.classes is not None else None}

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
                            self.num_classes, pad, self.flip, self.classes)

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

def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The UCI 8x8 handwritten digits scikit-learn ships: images ``[1797, 8, 8]`` (0..16) and labels. Read
    from scikit-learn's own file, which is what its ``load_digits`` does, without importing scikit-learn (a
    second or two in every process: each CLI run, sweep worker and DDP rank); through ``load_digits`` if that
    file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0], "datasets", "data", "digits.csv.gz") if roots else None
    if path is not None and path.is_file():
        data = np.loadtxt(path, delimiter=",")  # 64 pixels then the label, one row per image
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def load_digits_dataset(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    pixels, labels = digits_arrays()
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    return ImageDataset(
        "digits", torch.from_numpy(images[train]), torch.from_numpy(labels[train]),
        torch.from_numpy(images[test]), torch.from_numpy(labels[test]), 10, pad=1, flip=False,
        classes=[str(i) for i in range(10)],
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


def _read_cifar_names(path: Path, key: bytes, n: int) -> list[str] | None:
    """The class names of a CIFAR meta file (``batches.meta`` / ``meta``); None when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in d[key]]
    except Exception:
        return None
    return names if len(names) == n else None


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
    n = 100 if hundred else 10
    classes = (_read_cifar_names(root / "meta", b"fine_label_names", n) if hundred
               else _read_cifar_names(root / "batches.meta", b"label_names", n))
    return ImageDataset(name, torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(vx),
                        torch.from_numpy(vy), n, pad=4, flip=True, classes=classes).validate()


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
        classes=wnids,
    ).validate()


# ------------------------------------------------------------------------------------- image folder

FOLDER_LAYOUT = "DIR/train/<class>/*, DIR/test/<class>/* (or DIR/val/<class>/*)"
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}  # and every "I;16..." mode


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_folders(split: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(split.iterdir()) if _visible(d) and d.is_dir()}


def _image_files(folder: Path) -> list[Path]:
    """The non-hidden files under ``folder`` (subfolders included, hidden ones skipped), sorted."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if all(not part.startswith(".") for part in rel) and p.is_file():
            out.append(p)
    return out


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _decode_one(path: Path, size: int | None) -> np.ndarray:
    """One image as uint8 [H, W] (grayscale) or [H, W, 3] (anything else), resized to size x size if asked."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # photos are stored sideways with an orientation tag
            mode = im.mode
            if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit, 32-bit or float grayscale: to 8 bits
                a = np.asarray(im, dtype=np.float64)
                peak = float(a.max()) if a.size else 0.0
                if mode.startswith("I;16") or peak > 255:
                    top = 65535.0  # a 16-bit range
                else:
                    top = 1.0 if mode == "F" and peak <= 1.0 else 255.0
                im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
            else:
                im = im.convert("L" if mode in _GRAY_MODES else "RGB")
            if size is not None and im.size != (size, size):
                shrink = size <= min(im.size)
                im = im.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path} ({_one_line(e)})") from None


def _decode_folder_split(files: list[Path], size: int | None, desc: str) -> list[np.ndarray]:
    from tqdm import tqdm

    return [_decode_one(p, size) for p in tqdm(files, desc=desc, unit="img", leave=False, disable=None)]


def load_folder(data_dir: str | None = None, download: bool = False, image_size: int | None = None) -> ImageDataset:
    """Your own images: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``DIR/val/<class>/*``)."""
    if download:
        raise UserError("--dataset folder reads your own images: drop --download")
    if not data_dir:
        raise UserError(f"--dataset folder needs --data-dir DIR laid out as {FOLDER_LAYOUT}")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root} does not exist (or is not a folder)")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise UserError(f"no {train_dir} folder: --dataset folder expects {FOLDER_LAYOUT}")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if test_dir is None:
        raise UserError(f"no {root / 'test'} or {root / 'val'} folder: --dataset folder expects {FOLDER_LAYOUT}")
    train_classes = _class_folders(train_dir)
    test_classes = _class_folders(test_dir)
    classes = list(train_classes)
    if len(classes) < 2:
        raise UserError(f"{train_dir} holds {len(classes)} class folder{'s' if len(classes) != 1 else ''}; "
                        f"a classifier needs at least 2 ({FOLDER_LAYOUT})")
    missing = [c for c in classes if c not in test_classes]
    if missing:
        raise UserError(f"{test_dir} has no folder for the class{'es' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} (found in {train_dir})")
    unknown = [c for c in test_classes if c not in train_classes]
    if unknown:
        raise UserError(f"{test_dir} holds the class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"that {train_dir} does not have")
    splits = {}
    for split_dir, folders in ((train_dir, train_classes), (test_dir, test_classes)):
        files, labels = [], []
        for label, c in enumerate(classes):
            imgs = _image_files(folders[c])
            if not imgs:
                raise UserError(f"no images in the class folder {folders[c]}")
            files += imgs
            labels += [label] * len(imgs)
        splits[split_dir.name] = (files, labels)
    decoded = {name: _decode_folder_split(files, image_size, f"decoding {root.name or root}/{name}")
               for name, (files, _) in splits.items()}
    if image_size is None:  # every image as it is: they must share one square size
        sizes: dict[tuple[int, int], list[Path]] = {}
        for name, arrays in decoded.items():
            for p, a in zip(splits[name][0], arrays):
                sizes.setdefault((a.shape[1], a.shape[0]), []).append(p)
        if len(sizes) > 1:
            found = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
            listed = ", ".join(f"{w}x{h} ({len(ps)} image{'s' if len(ps) > 1 else ''}, e.g. {ps[0]})"
                               for (w, h), ps in found[:4])
            more = f" and {len(found) - 4} more sizes" if len(found) > 4 else ""
            raise UserError(f"the images in {root} differ in size: {listed}{more}; pass --image-size N to resize "
                            f"them all to N x N")
        (w, h), ps = next(iter(sizes.items()))
        if w != h:
            raise UserError(f"the images in {root} are {w}x{h}, not square; pass --image-size N to resize them to N x N")
    gray = all(a.ndim == 2 for arrays in decoded.values() for a in arrays)

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        if gray:
            return torch.from_numpy(np.stack(arrays)[:, None])
        out = np.stack([a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays])
        return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())

    (train_files, train_labels), (test_files, test_labels) = splits.values()
    tx, vx = (stack(decoded[name]) for name in splits)
    decoded.clear()
    size = int(tx.shape[-1])
    return ImageDataset(
        "folder", tx, torch.tensor(train_labels, dtype=torch.int64), vx, torch.tensor(test_labels, dtype=torch.int64),
        len(classes), pad=max(1, round(size / 8)), flip=True, classes=classes,
    ).validate()


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": load_digits_dataset,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tinyimagenet": load_tinyimagenet,
    "folder": load_folder,
}
_DECODES_AT_SIZE = {"folder"}  # readers that take image_size (the others are resized after loading)


def load_dataset(name: str, data_dir: str | None = None, download: bool = False,
                 image_size: int | None = None) -> ImageDataset:
    """The dataset ``name``; ``image_size`` lets a reader that decodes images do so at that size (the
    others ignore it: resize their result with :meth:`ImageDataset.resized`)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    extra = {"image_size": image_size} if name in _DECODES_AT_SIZE and image_size else {}
    return DATASETS[name](data_dir=data_dir, download=download, **extra)
