"""CPU inference latency of a pruned model: dense execution vs the sparse execution available here.

Paths, on the same 90%-sparse weights (magnitude-pruned, so the figures do not depend on training):
* PyTorch dense: the plain model (zeros are multiplied like any other weight);
* ONNX Runtime: the exported model (dense kernels; ORT has no sparse convolution on CPU);
* torch.sparse CSR: every conv as im2col (``F.unfold``) times a CSR weight matrix, every linear as CSR.
Prints median latencies and ratios to PyTorch dense, honestly, whatever they are.

    python benchmarks/inference.py [--arch resnet20] [--size 32] [--batch 1] [--sparsity 0.9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_seconds  # noqa: E402

from kdprune.models import create_model
from kdprune.pruning import MaskSet, global_masks, prunable_parameters


class SparseExecutor:
    """Runs ``model`` with CSR weights by patching forwards on a private copy (benchmark only)."""

    def __init__(self, model: nn.Module):
        import copy

        self.model = copy.deepcopy(model).eval()
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                m._csr = m.weight.detach().flatten(1).to_sparse_csr()
                m.forward = self._conv(m)
            elif isinstance(m, nn.Linear):
                m._csr = m.weight.detach().to_sparse_csr()
                m.forward = self._linear(m)

    @staticmethod
    def _conv(m):
        def fwd(x):
            n, _, h, w = x.shape
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [n, C*k*k, L]
            oh = (h + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
            ow = (w + 2 * m.padding[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1] + 1
            flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [C*k*k, n*L]
            out = torch.sparse.mm(m._csr, flat).reshape(-1, n, oh * ow).transpose(0, 1)
            out = out.reshape(n, -1, oh, ow)
            return out if m.bias is None else out + m.bias.view(1, -1, 1, 1)
        return fwd

    @staticmethod
    def _linear(m):
        def fwd(x):
            out = torch.sparse.mm(m._csr, x.t()).t()
            return out if m.bias is None else out + m.bias
        return fwd

    def __call__(self, x):
        return self.model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--iters", type=int, default=20, help="forward passes per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, 10).eval()
    params = prunable_parameters(model)
    MaskSet(global_masks({k: p.detach().abs() for k, p in params.items()}, args.sparsity)).bind(model).apply_()
    x = torch.randn(args.batch, 3, args.size, args.size)
    sparse = SparseExecutor(model)
    with torch.no_grad():
        diff = float((sparse(x) - model(x)).abs().max())

    fns = {}

    def loop(f):
        def run():
            with torch.inference_mode():
                for _ in range(args.iters):
                    f()
        return run

    fns["PyTorch dense"] = loop(lambda: model(x))
    fns["torch.sparse CSR"] = loop(lambda: sparse(x))
    try:
        import onnxruntime as ort

        onnx_path = Path(tempfile.mkdtemp()) / "m.onnx"
        from kdprune.deploy.exporting import onnx_export

        onnx_export(model, x, str(onnx_path))  # the exporter `kdprune export --format onnx` uses
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        xn = x.numpy()
        fns["ONNX Runtime"] = loop(lambda: sess.run(None, {"images": xn}))
    except ImportError:
        print("onnxruntime not installed: skipping the ONNX Runtime path (pip install 'kdprune[export]')")
    sec = median_seconds(fns, args.repeats)
    print(f"{args.arch} at {args.sparsity:.0%} sparsity, batch {args.batch}, {args.size}x{args.size}, CPU "
          f"({torch.get_num_threads()} threads); sparse path max |diff| vs dense {diff:.1e}")
    base = sec["PyTorch dense"]
    for k, s in sec.items():
        print(f"  {k:18s} {1000 * s / args.iters:8.3f} ms/forward   {base / s:5.2f}x the speed of PyTorch dense")


if __name__ == "__main__":
    main()
