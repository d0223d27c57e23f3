"""Atomic, checksummed training checkpoints.

``checkpoint.pt`` is a ``torch.save`` of plain state dicts and numbers (loaded with
``weights_only=True``, never a pickled model), written to a temporary name and renamed. Its SHA-256 is
stored next to it in ``checkpoint.pt.sha256`` and verified on load. The new digest joins the old one there
before the rename and replaces it after, so a kill at any moment leaves a checkpoint its sidecar accepts.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from kdprune.errors import UserError, first_line
from kdprune.io import atomic_path, sha256_file, write_text


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digests(sidecar: Path) -> list[str]:
    return sidecar.read_text().split() if sidecar.is_file() else []


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    sidecar = _sidecar(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        digest = sha256_file(tmp)
        write_text(sidecar, "\n".join([digest, *_digests(sidecar)[:1]]) + "\n")  # the old file or the new one
    write_text(sidecar, digest + "\n")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    sidecar = _sidecar(path)
    if sidecar.is_file():
        if sha256_file(path) not in _digests(sidecar):
            raise UserError(f"checkpoint {path} is corrupt (checksum mismatch); delete it to restart that stage")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = first_line(e)
        if "Weights only load failed" in first:
            found = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)", str(e))
            if found:  # a pickled model or other Python objects: never unpickled (weights_only=True)
                raise UserError(f"cannot read checkpoint {path}: it holds a pickled {found.group(1)}, which kdprune "
                                "does not unpickle; save a state_dict instead: torch.save(model.state_dict(), "
                                "'teacher.pt'), or a safetensors file") from None
            lines = [ln.strip() for ln in str(e).split("WeightsUnpickler error:")[-1].splitlines() if ln.strip()]
            first = lines[0] if lines else first
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}: {first})") from None
