"""``kdprune export`` and ``kdprune inspect``: what a run folder or weights file holds, and how to ship it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from kdprune.deploy.sparse_format import is_sparse_file, load_sparse, save_sparse
from kdprune.errors import UserError
from kdprune.io import atomic_path, is_safetensors, read_json, save_tensors
from kdprune.models import create_model
from kdprune.models.weights import read_state_dict

IMAGE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64}


def _weights_file(src: Path) -> Path:
    return src / "model.safetensors" if src.is_dir() else src


def describe_source(src: str | Path, arch: str | None = None) -> dict:
    """Find the weights, architecture, class count, channels and image size of a run folder or file."""
    src = Path(src)
    wfile = _weights_file(src)
    if not wfile.is_file():
        raise UserError(f"no weights at {wfile}")
    state = load_sparse(wfile) if is_safetensors(wfile) and is_sparse_file(wfile) else read_state_dict(wfile)
    info: dict = {"weights": str(wfile), "state": state, "arch": arch, "dataset": None}
    folder = wfile.parent
    for meta in (folder / "config.yaml", folder / "metrics.json"):
        if meta.is_file():
            d = yaml.safe_load(meta.read_text()) if meta.suffix == ".yaml" else read_json(meta)
            info["arch"] = info["arch"] or d.get("arch")
            info["dataset"] = info["dataset"] or d.get("dataset")
    if info["dataset"] is None and (folder.parent / "config.yaml").is_file():  # teacher/ and student/ of a run
        d = yaml.safe_load((folder.parent / "config.yaml").read_text())
        info["dataset"] = d.get("dataset")
        if info["arch"] is None and folder.name == "teacher":
            info["arch"] = d.get("teacher_arch")
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)]
    if not weights:
        raise UserError(f"{wfile} holds no conv or linear weights")
    info["in_channels"] = int(next(w for w in weights if w.dim() == 4).shape[1]) if any(w.dim() == 4 for w in weights) else None
    info["num_classes"] = int([w for w in weights if w.dim() == 2][-1].shape[0]) if any(w.dim() == 2 for w in weights) else None
    info["image_size"] = IMAGE_SIZE.get(info["dataset"] or "", None)
    return info


def build_model(info: dict) -> nn.Module:
    if not info["arch"]:
        raise UserError(f"cannot tell the architecture of {info['weights']}; pass --arch")
    model = create_model(info["arch"], info["num_classes"], info["in_channels"])
    tmp_state = info["state"]
    missing = [k for k in model.state_dict() if k not in tmp_state]
    if missing:
        raise UserError(f"{info['weights']} does not match {info['arch']}: missing {missing[0]}")
    try:
        model.load_state_dict(tmp_state)
    except RuntimeError as e:
        raise UserError(f"{info['weights']} does not match {info['arch']}: {str(e).splitlines()[-1].strip()}") from None
    return model.eval()


def _macs(model: nn.Module, in_channels: int, size: int) -> tuple[int, int]:
    """(dense MACs, non-zero MACs) of Conv2d/Linear layers for one image."""
    dense, nonzero = [0], [0]

    def hook(m, inp, out):
        positions = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
        dense[0] += positions * m.weight.numel()
        nonzero[0] += positions * int(torch.count_nonzero(m.weight))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size))
    for h in hs:
        h.remove()
    return dense[0], nonzero[0]


def inspect(src: str | Path, arch: str | None = None, image_size: int | None = None) -> dict:
    info = describe_source(src, arch)
    state = info["state"]
    layers = {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)}
    rows = [{"name": k, "shape": list(v.shape), "params": v.numel(), "nonzero": int(torch.count_nonzero(v))}
            for k, v in layers.items()]
    prunable = sum(r["params"] for r in rows)
    prunable_nz = sum(r["nonzero"] for r in rows)
    floats = [v for v in state.values() if v.is_floating_point()]
    total = sum(v.numel() for v in floats)
    nonzero = sum(int(torch.count_nonzero(v)) for v in floats)
    report = {"source": info["weights"], "arch": info["arch"], "layers": rows,
              "sparsity": 1 - prunable_nz / max(prunable, 1), "prunable_params": prunable,
              "prunable_nonzero": prunable_nz, "total_params": total, "nonzero_params": nonzero,
              "compression_ratio": total / max(nonzero, 1)}
    size = image_size or info["image_size"]
    if info["arch"] and size:
        report["dense_macs"], report["nonzero_macs"] = _macs(build_model(info), info["in_channels"], size)
        report["image_size"] = size
    return report


def format_inspect(r: dict) -> str:
    lines = [f"{r['source']} ({r['arch'] or 'architecture unknown'})", "",
             f"{'layer':34s} {'shape':>18s} {'params':>10s} {'non-zero':>10s} {'density':>8s}"]
    for row in r["layers"]:
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"{row['name']:34s} {shape:>18s} {row['params']:>10,d} {row['nonzero']:>10,d} "
                     f"{row['nonzero'] / row['params']:>8.2%}")
    lines += ["", f"global sparsity (conv + linear weights): {r['sparsity']:.4%}  "
                  f"({r['prunable_nonzero']:,} of {r['prunable_params']:,} non-zero)",
              f"all parameters: {r['nonzero_params']:,} non-zero of {r['total_params']:,}  "
              f"(compression ratio {r['compression_ratio']:.2f}x)"]
    if "nonzero_macs" in r:
        lines.append(f"MACs per {r['image_size']}x{r['image_size']} image: {r['nonzero_macs']:,} non-zero of "
                     f"{r['dense_macs']:,} ({r['nonzero_macs'] / max(r['dense_macs'], 1):.2%})")
    return "\n".join(lines) + "\n"


def export(src: str | Path, fmt: str, output: str | Path | None = None, arch: str | None = None,
           fp16: bool = False, image_size: int | None = None, atol: float = 1e-4) -> dict:
    info = describe_source(src, arch)
    src_path = Path(info["weights"])
    default_name = {"dense": "model.dense.safetensors", "sparse": "model.sparse.safetensors", "onnx": "model.onnx"}
    if fmt not in default_name:
        raise UserError(f"unknown export format {fmt!r}; choose dense, sparse or onnx")
    out = Path(output) if output else src_path.parent / default_name[fmt]
    if out.exists() and out.is_dir():
        raise UserError(f"--output {out} is a folder")
    dense_bytes = sum(v.numel() * v.element_size() for v in info["state"].values())
    result = {"format": fmt, "output": str(out), "dense_bytes": dense_bytes}
    if fmt == "dense":
        save_tensors(out, info["state"], {"format": "kdprune-model-v1"})
    elif fmt == "sparse":
        save_sparse(out, info["state"], fp16=fp16, meta={"arch": info["arch"] or ""})
        back = load_sparse(out)
        if not fp16 and any(not torch.equal(back[k], v) for k, v in info["state"].items()):
            raise RuntimeError("sparse round trip changed the weights")  # a bug, not a user error
    else:
        result.update(_export_onnx(info, out, image_size or info["image_size"], atol))
    result["bytes"] = os.path.getsize(out)
    sparse_src = is_safetensors(src_path) and is_sparse_file(src_path)
    result["dense_file_bytes"] = dense_bytes if sparse_src else os.path.getsize(src_path)
    result["size_ratio"] = result["bytes"] / result["dense_file_bytes"]
    return result


def _export_onnx(info: dict, out: Path, size: int | None, atol: float) -> dict:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'kdprune[export]'") from None
    if not size:
        raise UserError("cannot tell the input image size; pass --image-size")
    model = build_model(info)
    x = torch.randn(2, info["in_channels"], size, size, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp:
        exporter = onnx_export(model, x, str(tmp))
        onnx.checker.check_model(str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        xs = torch.randn(8, info["in_channels"], size, size, generator=torch.Generator().manual_seed(1))
        got = torch.from_numpy(sess.run(None, {"images": xs.numpy()})[0])
        with torch.no_grad():
            want = model(xs)
        diff = float((got - want).abs().max())
        if diff > atol:
            raise RuntimeError(f"ONNX Runtime output differs from PyTorch by {diff:.2e} (> {atol})")
    return {"onnx_max_abs_diff": diff, "image_size": size, "onnx_exporter": exporter}


def onnx_export(model: torch.nn.Module, x: torch.Tensor, path: str) -> str:
    """torch.export-based ONNX export (needs onnxscript); the legacy TorchScript exporter without it."""
    import logging

    try:
        import onnxscript  # noqa: F401
    except ImportError:
        torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        return "torchscript"
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns about every torchvision op it cannot register
    try:
        torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
                          external_data=False)  # one self-contained file (weights inside), not path + path.data
    finally:
        log.setLevel(level)
    return "torch.export"
