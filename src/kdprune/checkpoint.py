"""Atomic, checksummed training checkpoints.

``checkpoint.pt`` is a ``torch.save`` of plain state dicts and numbers (loaded with
``weights_only=True``, never a pickled model), written to a temporary name and renamed. Its SHA-256 is
stored next to it in ``checkpoint.pt.sha256`` (written after the checkpoint), and verified on load.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from kdprune.errors import UserError, first_line
from kdprune.io import atomic_path, sha256_file, write_text


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        digest = sha256_file(tmp)
    write_text(path.with_name(path.name + ".sha256"), digest + "\n")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        expected = sidecar.read_text().strip()
        if sha256_file(path) != expected:
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
