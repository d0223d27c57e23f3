"""``kdprune export`` and ``kdprune inspect``: what a run folder or weights file holds, and how to ship it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from kdprune.deploy.sparse_format import is_sparse_file, load_sparse, read_metadata, save_sparse
from kdprune.errors import UserError
from kdprune.io import atomic_path, find_up, is_safetensors, read_json, save_tensors
from kdprune.models import create_model
from kdprune.models.macs import count_macs
from kdprune.models.registry import registered
from kdprune.models.weights import read_state_dict

IMAGE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64}


def _weights_file(src: Path) -> Path:
    return src / "model.safetensors" if src.is_dir() else src


DATASET_KEYS = ("classes", "mean", "std")  # what an export carries from the run's dataset.json


def _dataset_meta(src: Path, wfile: Path) -> dict:
    """``classes``, ``mean``, ``std`` (and ``image_size``) of the run that trained ``wfile``: its
    ``dataset.json`` (in the run folder, beside the weights, or up to three folders above them, as in
    ``sparsity-0.9/kd/`` or ``imp/kd/round-05-0.9/``), else the metadata an export of it carries; {} when neither exists."""
    f = find_up(wfile.parent, "dataset.json")  # wfile.parent is src itself when src is a run folder
    if f is not None:
        try:
            meta = read_json(f)
        except (OSError, ValueError):
            return {}  # unreadable: the weights still export, without it
        return {k: meta.get(k) for k in DATASET_KEYS + ("image_size",)} if isinstance(meta, dict) else {}
    if is_safetensors(wfile):
        import json

        stored = read_metadata(wfile)
        out = {}
        for k in DATASET_KEYS:
            try:
                out[k] = json.loads(stored[k]) if k in stored else None
            except ValueError:
                out[k] = None
        return out if any(v is not None for v in out.values()) else {}
    return {}


def _add_dataset_meta(info: dict, meta: dict) -> None:
    """Put the recorded dataset facts that fit these weights into ``info`` (a class list of another length,
    or statistics of another channel count, belong to another model and are left out)."""
    classes, mean, std = (meta.get(k) for k in DATASET_KEYS)
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes) and (
            info["num_classes"] is None or len(classes) == info["num_classes"]):
        info["classes"] = classes
    stats_ok = all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) and (
        info["in_channels"] is None or len(v) == info["in_channels"]) for v in (mean, std))
    if stats_ok:
        info["mean"], info["std"] = mean, std
    if not info["image_size"] and isinstance(meta.get("image_size"), int):
        info["image_size"] = meta["image_size"]


def export_metadata(info: dict) -> dict[str, str]:
    """The recorded class names and normalisation as JSON strings (safetensors and ONNX metadata)."""
    import json

    return {k: json.dumps(info[k]) for k in DATASET_KEYS if info.get(k) is not None}


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
            info["resized"] = info.get("resized") or d.get("image_size")
    if info["dataset"] is None and (folder.parent / "config.yaml").is_file():  # teacher/ and student/ of a run
        d = yaml.safe_load((folder.parent / "config.yaml").read_text())
        info["dataset"] = d.get("dataset")
        info["resized"] = info.get("resized") or d.get("image_size")
        if info["arch"] is None and folder.name == "teacher":
            info["arch"] = d.get("teacher_arch")
    widths = folder / "widths.json"
    if widths.is_file():  # a channel-pruned model: rebuilt from its widths
        w = read_json(widths)
        info["widths"] = w["widths"]
        info["arch"] = info["arch"] or w.get("arch")
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)]
    if not weights:
        raise UserError(f"{wfile} holds no conv or linear weights")
    meta = registered(info["arch"])  # a registered architecture names its stem and classifier
    stem, head = (state.get(f"{meta.first_conv}.weight"), state.get(f"{meta.classifier}.weight")) if meta else (None, None)
    if stem is None:  # a user's model: the first conv and the last linear layer
        stem = next((w for w in weights if w.dim() == 4), None)
    if head is None:
        head = next((w for w in reversed(weights) if w.dim() == 2), None)
    info["in_channels"] = int(stem.shape[1]) if stem is not None else None
    info["num_classes"] = int(head.shape[0]) if head is not None else None
    info["image_size"] = info.pop("resized", None) or IMAGE_SIZE.get(info["dataset"] or "", None)
    _add_dataset_meta(info, _dataset_meta(src, wfile))
    return info


def build_model(info: dict) -> nn.Module:
    if not info["arch"]:
        raise UserError(f"cannot tell the architecture of {info['weights']}; pass --arch")
    model = create_model(info["arch"], info["num_classes"], info["in_channels"])
    if info.get("widths"):
        from kdprune.pruning.structured import apply_widths

        apply_widths(model, info["widths"])
    tmp_state = info["state"]
    missing = [k for k in model.state_dict() if k not in tmp_state]
    if missing:
        raise UserError(f"{info['weights']} does not match {info['arch']}: missing {missing[0]}")
    try:
        model.load_state_dict(tmp_state)
    except RuntimeError as e:
        raise UserError(f"{info['weights']} does not match {info['arch']}: {str(e).splitlines()[-1].strip()}") from None
    return model.eval()


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding NaN or infinity (a corrupt file, or training that diverged)."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _names(keys: list[str], most: int = 10) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def nonfinite_warning(keys: list[str]) -> str:
    return (f"warning: NaN or infinite values in {len(keys)} tensors ({_names(keys)}): the file is corrupt or its "
            "training diverged; its sparsity and counts are not meaningful")


def inspect(src: str | Path, arch: str | None = None, image_size: int | None = None) -> dict:
    info = describe_source(src, arch)
    state = info["state"]
    layers = {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)}
    rows = [{"name": k, "shape": list(v.shape), "params": v.numel(), "nonzero": int(torch.count_nonzero(v))}
            for k, v in layers.items()]
    prunable = sum(r["params"] for r in rows)
    prunable_nz = sum(r["nonzero"] for r in rows)
    params = [v for k, v in state.items() if _is_parameter(k, v)]
    total = sum(v.numel() for v in params)
    nonzero = sum(int(torch.count_nonzero(v)) for v in params)
    report = {"source": info["weights"], "arch": info["arch"], "layers": rows,
              "sparsity": 1 - prunable_nz / max(prunable, 1), "prunable_params": prunable,
              "prunable_nonzero": prunable_nz, "total_params": total, "nonzero_params": nonzero,
              "compression_ratio": total / max(nonzero, 1), "nonfinite": nonfinite_tensors(state)}
    size = image_size or info["image_size"]
    if info["arch"] and size:
        report["dense_macs"], report["nonzero_macs"] = count_macs(build_model(info),
                                                                    torch.zeros(1, info["in_channels"], size, size))
        report["image_size"] = size
    if info.get("widths"):  # channel pruning: what the model was before, and its latency as measured then
        folder = Path(info["weights"]).parent
        for f in (folder / "metrics.json", find_up(folder, "plan.json")):  # kdprune prune; a run's target folder
            m = read_json(f) if f is not None and f.is_file() else {}
            if "macs_before" in m:
                report.update({k: m[k] for k in ("macs_before", "params_before", "latency") if m.get(k) is not None})
                break
    if any(info.get(k) is not None for k in DATASET_KEYS):  # recorded by the run (dataset.json)
        report["num_classes"] = info["num_classes"]
        report.update({k: info[k] for k in DATASET_KEYS if info.get(k) is not None})
    return report


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _is_parameter(key: str, value: torch.Tensor) -> bool:
    """Parameters of a state_dict: floating tensors that are not BatchNorm's running statistics."""
    return value.is_floating_point() and not key.rsplit(".", 1)[-1] in _BUFFERS


def format_inspect(r: dict) -> str:
    lines = [f"{r['source']} ({r['arch'] or 'architecture unknown'})", ""]
    if r.get("nonfinite"):
        lines[1:1] = [nonfinite_warning(r["nonfinite"])]
    lines.append(f"{'layer':34s} {'shape':>18s} {'params':>10s} {'non-zero':>10s} {'density':>8s}")
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
    if "macs_before" in r and "dense_macs" in r:
        lines.append(f"MACs per {r['image_size']}x{r['image_size']} image: {r['dense_macs']:,} (before channel pruning "
                     f"{r['macs_before']:,}: {r['macs_before'] / max(r['dense_macs'], 1):.2f}x fewer); parameters "
                     f"{r['total_params']:,} (before {r['params_before']:,})")
    if r.get("latency"):
        lat = r["latency"]
        target = f" (target {lat['target']:g}x)" if lat.get("target") else ""
        predicted = (f"; the latency table predicted {lat['predicted_speedup']:.2f}x"
                     if lat.get("predicted_speedup") else "")
        lines.append(f"latency per batch of {lat['batch']}: {lat['pruned_ms']:.2f} ms against the dense model's "
                     f"{lat['dense_ms']:.2f} ms, {lat['speedup']:.2f}x faster as measured when pruned{target}"
                     f"{predicted} ({lat['runtime']}, {lat['threads']} thread(s), {lat['cpu']})")
    if r.get("classes") is not None:
        names = ", ".join(r["classes"][:5]) + (", ..." if len(r["classes"]) > 5 else "")
        lines.append(f"classes: {len(r['classes'])} ({names})")
    elif "num_classes" in r:
        lines.append(f"classes: {r['num_classes']}")
    if r.get("mean") is not None:
        lines.append("normalisation: mean " + ", ".join(f"{v:.4f}" for v in r["mean"]) + "; std "
                     + ", ".join(f"{v:.4f}" for v in r["std"]))
    return "\n".join(lines) + "\n"


DEFAULT_NAMES = {"dense": "model.dense.safetensors", "sparse": "model.sparse.safetensors", "onnx": "model.onnx"}


def default_name(fmt: str, fp16: bool = False) -> str:
    """The file name an export gets next to its weights (fp16 sparse files get their own name)."""
    return "model.sparse-fp16.safetensors" if fmt == "sparse" and fp16 else DEFAULT_NAMES[fmt]


def export(src: str | Path, fmt: str, output: str | Path | None = None, arch: str | None = None,
           fp16: bool = False, image_size: int | None = None, atol: float = 1e-4) -> dict:
    info = describe_source(src, arch)
    src_path = Path(info["weights"])
    if fmt not in DEFAULT_NAMES:
        raise UserError(f"unknown export format {fmt!r}; choose dense, sparse or onnx")
    out = Path(output) if output else src_path.parent / default_name(fmt, fp16)
    size = image_size or info["image_size"]
    if fmt == "onnx" and not size:
        raise UserError("cannot tell the input image size; pass --image-size")
    model = build_model(info) if fmt == "onnx" else None
    result = write_export(out, fmt, info["state"], model=model, fp16=fp16, arch=info["arch"] or "",
                          input_shape=(info["in_channels"], size, size) if size else None, atol=atol,
                          metadata=export_metadata(info))
    sparse_src = is_safetensors(src_path) and is_sparse_file(src_path)
    result["dense_file_bytes"] = result["dense_bytes"] if sparse_src else os.path.getsize(src_path)
    result["size_ratio"] = result["bytes"] / result["dense_file_bytes"]
    return result


def write_export(out: str | Path, fmt: str, state: dict[str, torch.Tensor], *, model: nn.Module | None = None,
                 fp16: bool = False, arch: str = "", input_shape: tuple | None = None, atol: float = 1e-4,
                 metadata: dict[str, str] | None = None) -> dict:
    """Write ``state`` (or ``model``, for ONNX) to ``out`` as ``fmt``; returns what was written. ``metadata``
    (string values: the class names and normalisation, see :func:`export_metadata`) goes into the file."""
    metadata = dict(metadata or {})
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UserError(f"--output {out} is a folder")
    bad = nonfinite_tensors(state)
    if bad:
        raise UserError(f"refusing to export: NaN or infinite values in {len(bad)} tensors ({_names(bad)}); "
                        "the weights are corrupt or their training diverged")
    dense_bytes = sum(v.numel() * v.element_size() for v in state.values())
    result = {"format": fmt, "output": str(out), "dense_bytes": dense_bytes}
    if fmt == "dense":
        save_tensors(out, state, {**metadata, "format": "kdprune-model-v1"})
    elif fmt == "sparse":
        save_sparse(out, state, fp16=fp16, meta={**metadata, "arch": arch})
        back = load_sparse(out)
        if not fp16 and any(not torch.equal(back[k], v) for k, v in state.items()):
            raise RuntimeError("sparse round trip changed the weights")  # a bug, not a user error
    elif fmt == "onnx":
        if model is None or not input_shape:
            raise UserError("ONNX export needs the model and the input shape (channels, height, width)")
        result.update(export_onnx_checked(model, tuple(input_shape), out, atol, metadata=metadata))
    else:
        raise UserError(f"unknown export format {fmt!r}; choose dense, sparse or onnx")
    result["bytes"] = os.path.getsize(out)
    result["size_ratio"] = result["bytes"] / dense_bytes
    return result


ONNX_INSTALL_HINT = ("ONNX export needs onnx, onnxruntime and onnxscript: pip install onnx onnxruntime onnxscript "
                     "(in a kdprune clone: pip install -e '.[export]')")


def export_onnx_checked(model: nn.Module, input_shape: tuple, out: Path, atol: float = 1e-4,
                        metadata: dict[str, str] | None = None) -> dict:
    """Export ``model`` (eval mode, CPU) to ONNX with a dynamic batch axis, then check ONNX Runtime's outputs
    against PyTorch's on random inputs; the file is only kept when they agree within ``atol``. ``metadata``
    goes into the model's ``metadata_props``."""
    import copy

    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UserError(ONNX_INSTALL_HINT) from None
    model = copy.deepcopy(model).cpu().eval()
    c, h, w = input_shape
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp:
        exporter = onnx_export(model, x, str(tmp))
        if metadata:
            proto = onnx.load(str(tmp))
            props = {p.key: p for p in proto.metadata_props}
            for k, v in metadata.items():
                entry = props.get(k) or proto.metadata_props.add()
                entry.key, entry.value = k, v
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        xs = torch.randn(8, c, h, w, generator=torch.Generator().manual_seed(1))
        got = torch.from_numpy(sess.run(None, {"images": xs.numpy()})[0])
        with torch.no_grad():
            want = model(xs)
        diff = float((got - want).abs().max())
        if not diff <= atol:  # NaN compares false both ways: a non-finite difference fails the check too
            raise UserError(f"ONNX Runtime output differs from PyTorch by {diff:.2e} (more than {atol}); "
                            f"{out} was not written")
    return {"onnx_max_abs_diff": diff, "image_size": h, "onnx_exporter": exporter}


def onnx_export(model: torch.nn.Module, x: torch.Tensor, path: str) -> str:
    """torch.export-based ONNX export (needs onnxscript); the legacy TorchScript exporter without it."""
    import logging

    try:
        import onnxscript  # noqa: F401
    except ImportError:
        torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        return "torchscript"
    import warnings

    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns about every torchvision op it cannot register
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # inside torch
            torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
                              external_data=False)  # one self-contained file (weights inside), not path + .data
    finally:
        log.setLevel(level)
    return "torch.export"
