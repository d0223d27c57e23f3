"""A compressed file for sparse weights, stored as safetensors (so any safetensors reader opens it).

Each tensor of the state dict is stored one of three ways, whichever is smallest:

* ``dense``:   ``<name>`` as it is (biases, BN, and weights with few zeros);
* ``bitmask``: ``<name>::bits`` (uint8, ``numpy.packbits`` of the non-zero pattern, row-major) and
  ``<name>::values`` (the non-zeros in row-major order);
* ``coo``:     ``<name>::index`` (int32 flat indices of the non-zeros) and ``<name>::values``.

The metadata holds, per tensor, its encoding, shape and dtype. ``fp16=True`` stores floating values
as float16 (lossy: decoding gives the nearest float16 of each weight).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from kdprune.errors import UserError
from kdprune.io import load_tensors, save_tensors

FORMAT = "kdprune-sparse-v1"


def _nbytes(n: int, dtype: torch.dtype) -> int:
    return n * torch.empty((), dtype=dtype).element_size()


def encode(state: dict[str, torch.Tensor], fp16: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, layout = {}, {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        vdtype = torch.float16 if (fp16 and t.is_floating_point()) else t.dtype
        flat = t.flatten()
        nz = torch.nonzero(flat, as_tuple=False).flatten()
        n, k = flat.numel(), nz.numel()
        sizes = {
            "dense": _nbytes(n, vdtype),
            "bitmask": math.ceil(n / 8) + _nbytes(k, vdtype),
            "coo": _nbytes(k, torch.int32) + _nbytes(k, vdtype),
        }
        enc = min(sizes, key=sizes.get) if t.is_floating_point() and n < 2**31 else "dense"
        if enc == "dense":
            tensors[name] = t.to(vdtype)
        else:
            tensors[f"{name}::values"] = flat[nz].to(vdtype)
            if enc == "bitmask":
                bits = np.packbits((flat != 0).numpy().astype(np.uint8))
                tensors[f"{name}::bits"] = torch.from_numpy(bits)
            else:
                tensors[f"{name}::index"] = nz.to(torch.int32)
        layout[name] = {"encoding": enc, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    return tensors, layout


def decode(tensors: dict[str, torch.Tensor], layout: dict) -> dict[str, torch.Tensor]:
    state = {}
    for name, info in layout.items():
        dtype = getattr(torch, info["dtype"])
        shape = tuple(info["shape"])
        n = math.prod(shape)
        try:
            if info["encoding"] == "dense":
                state[name] = tensors[name].to(dtype).reshape(shape)
                continue
            values = tensors[f"{name}::values"].to(dtype)
            flat = torch.zeros(n, dtype=dtype)
            if info["encoding"] == "bitmask":
                bits = np.unpackbits(tensors[f"{name}::bits"].numpy(), count=n).astype(bool)
                flat[torch.from_numpy(bits)] = values
            else:
                flat[tensors[f"{name}::index"].long()] = values
        except (KeyError, RuntimeError, ValueError, IndexError) as e:
            raise UserError(f"sparse file entry {name!r} is damaged ({type(e).__name__}: {e})") from None
        state[name] = flat.reshape(shape)
    return state


def save_sparse(path: str | Path, state: dict[str, torch.Tensor], fp16: bool = False, meta: dict | None = None) -> None:
    tensors, layout = encode(state, fp16)
    save_tensors(path, tensors, {"format": FORMAT, "layout": json.dumps(layout), **(meta or {})})


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None


def is_sparse_file(path: str | Path) -> bool:
    return read_metadata(path).get("format") == FORMAT


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a kdprune sparse file")
    return decode(load_tensors(path), json.loads(meta["layout"]))
