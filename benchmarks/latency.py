"""CPU (and CUDA, where there is one) latency of channel-pruned models against the dense one.

ResNet-20 at 32x32 (CIFAR-sized), channels removed with ``kdprune.prune_channels`` to 2x and 4x fewer
MACs (group L1 magnitude: latency depends on the widths, not on which importance chose them), with widths
as they fall and rounded to multiples of 8 ("2x/8", ``--channel-round 8``), then each
model timed in PyTorch eager (NCHW and channels_last) and in ONNX Runtime (CPU), at batch 1 and batch 64, interleaved so machine
drift hits all alike. Prints median latencies and the speed-up of each pruned model over the dense one
on the same path and batch, measured in this one run.

    python benchmarks/latency.py [--arch resnet20] [--size 32] [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_seconds  # noqa: E402

import kdprune  # noqa: E402
from kdprune.models import create_model  # noqa: E402
from kdprune.models.macs import count_macs  # noqa: E402
from kdprune.pruning.structured import count_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = create_model(args.arch, 10, 3).eval()
    shape = (3, args.size, args.size)
    models = {"dense": dense}
    for factor in (2, 4):
        for round_to in (1, 8):  # widths as they fall, or multiples of 8 (kdprune --channel-round 8)
            m = copy.deepcopy(dense)
            kdprune.prune_channels(m, criterion="l1", target_macs=factor, input_shape=shape, round_to=round_to)
            models[f"{factor}x" + ("/8" if round_to > 1 else "")] = m.eval()
    x1 = torch.randn(1, *shape)
    for name, m in models.items():
        print(f"{name:6s} MACs {count_macs(m, x1)[0]:>12,}  parameters {count_params(m):>9,}")
    tmp = Path(tempfile.mkdtemp())
    sessions = {}
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # no spin-waiting after a run: it would steal the cores from the PyTorch timings interleaved with it
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if args.threads:
            opts.intra_op_num_threads = args.threads
        for name, m in models.items():
            kdprune.export(m, tmp / f"{name}.onnx", format="onnx", input_shape=shape)
            sessions[name] = ort.InferenceSession(str(tmp / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
    except ImportError:
        print("onnxruntime is not installed: PyTorch eager only (pip install onnx onnxruntime onnxscript)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for batch in (1, 64):
        x = torch.randn(batch, *shape)
        fns = {}
        for dev in devices:
            for layout in ("NCHW", "channels_last"):
                cl = layout == "channels_last"
                xd = x.to(dev).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
                for name, m in models.items():
                    md = copy.deepcopy(m).to(dev, memory_format=torch.channels_last if cl else torch.contiguous_format)

                    def eager(md=md, xd=xd, dev=dev):
                        with torch.inference_mode():
                            md(xd)
                        if dev == "cuda":
                            torch.cuda.synchronize()

                    fns[(f"torch-{dev} {layout}", name)] = eager
        for name, sess in sessions.items():
            xn = x.numpy()
            fns[("onnxruntime-cpu", name)] = lambda sess=sess, xn=xn: sess.run(None, {"images": xn})
        med = median_seconds(fns, repeats=args.repeats, warmup=2)
        print(f"\nbatch {batch}: median ms (speed-up over dense on the same path)")
        for path in dict.fromkeys(p for p, _ in fns):
            base = med[(path, "dense")]
            cells = "  ".join(f"{name} {med[(path, name)] * 1e3:8.2f} ({base / med[(path, name)]:.2f}x)"
                              for name in models)
            print(f"  {path:24s} {cells}")


if __name__ == "__main__":
    main()
