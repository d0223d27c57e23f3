"""Fetch, checksum and extract the official archives (for users with internet; tests serve them locally)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from kdprune.errors import UserError
from kdprune.io import file_lock

ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
    "tinyimagenet": ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                     "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200"),
}


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_dataset(name: str, data_dir: str | None) -> Path:
    """Download, verify and extract ``name`` into ``data_dir``; a no-op when already extracted.

    Safe when several processes start at once (a Slurm array, ``sweep --jobs``, torchrun's ranks): one holds a
    lock on ``data_dir/.NAME.lock`` and downloads while the others wait, and the folder appears whole (it is
    extracted beside it and renamed into place), so no process reads a half-extracted one."""
    url, md5, folder = ARCHIVES[name]
    if not data_dir:
        raise UserError("--download needs --data-dir (where to put the data)")
    root = Path(data_dir)
    if (root / folder).is_dir():
        return root / folder
    lock = root / f".{folder}.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as e:
        raise UserError(f"--download: cannot write to {root} ({e.strerror or e})") from None
    with file_lock(lock):
        if not (root / folder).is_dir():  # another process may have finished while this one waited
            _fetch_and_extract(name, url, md5, root, folder)
    return root / folder


def _fetch_and_extract(name: str, url: str, md5: str, root: Path, folder: str) -> None:
    from tqdm import tqdm

    archive = root / url.rsplit("/", 1)[1]
    if not archive.is_file() or md5_file(archive) != md5:
        part = archive.with_suffix(archive.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", disable=None) as bar:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            part.unlink(missing_ok=True)
            raise UserError(f"could not download {url} ({e})") from None
        part.replace(archive)
    got = md5_file(archive)
    if got != md5:
        raise UserError(f"{archive}: md5 {got} does not match the official {md5}; delete it and retry")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extracting", dir=root))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        if not (tmp / folder).is_dir():
            raise UserError(f"{archive} holds no {folder}/ folder; delete it and retry")
        (tmp / folder).rename(root / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
