"""Atomic file writing and the small serialisation helpers every stage uses.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from safetensors.torch import load_file, save_file

from kdprune.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock (``flock``) on ``path``, created if missing, held for the block; yields
    False instead of waiting when ``wait`` is off and another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        try:
            yield got
        finally:
            if got:
                fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Delete the temporary files :func:`atomic_path` leaves when its process is killed (``kill -9``)
    between writing and renaming; call it only on a folder no other process is writing. Returns the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [f for f in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")) if f.is_file()]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line; rewrite-and-rename so a crash leaves the old file or the new one."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    write_text(path, old + json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when the file starts like a safetensors file (8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_up(folder: str | os.PathLike, name: str, levels: int = 3) -> Path | None:
    """``folder/name``, else the same file up to ``levels`` folders above (a run's ``dataset.json`` seen from
    ``sparsity-0.9/kd/``, ``imp/kd/round-05-0.9/`` or a channel twin's ``2x/unstructured/kd/``); None when
    there is none."""
    folder = Path(folder)
    return next((d / name for d in (folder, *folder.parents[:levels]) if (d / name).is_file()), None)
