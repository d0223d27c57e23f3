"""The runtimes a latency target is measured in: PyTorch eager and ONNX Runtime (CPU).

Each is a :class:`kdprune.pruning.latency.Timer`: it times one layer at given widths (for the latency table)
and two whole models against each other (interleaved rounds, the speed-up being the median of the per-round
ratios, so that drift on a busy machine hits both alike), at the run's batch size and thread count.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from kdprune.choices import LATENCY_RUNTIMES as RUNTIMES
from kdprune.deploy.latency import eager_forward, interleaved_times
from kdprune.hardware import cpu_name
from kdprune.errors import UserError

ORT_INSTALL_HINT = ("--latency-runtime onnxruntime needs onnxruntime and onnx: pip install 'kdprune[export]' (in a "
                    "kdprune clone: pip install -e '.[export]'), or pass --latency-runtime torch")


def _seconds(fn: Callable[[], None], samples: int = 5, sample_s: float = 0.01) -> float:
    """The median time of one call of ``fn``, each sample repeating it for about ``sample_s`` seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    inner = max(1, math.ceil(sample_s / max(time.perf_counter() - t0, 1e-7)))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _layer(shape, cin: int, cout: int) -> nn.Module:
    """The layer at these widths, with the BatchNorm and ReLU that follow a conv in the models kdprune prunes."""
    if shape.kind == "linear":
        return nn.Linear(cin, cout)
    groups = cin if shape.depthwise else 1
    return nn.Sequential(nn.Conv2d(cin, cout, shape.kernel, shape.stride, shape.padding, shape.dilation, groups,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _layer_input(shape, cin: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if shape.kind == "linear":
        return torch.randn(batch, cin, generator=g)
    return torch.randn(batch, cin, *shape.in_hw, generator=g)


class _Timer:
    runtime = ""

    def __init__(self, input_shape: tuple[int, int, int], batch: int = 64, threads: int | None = None,
                 rounds: int = 15):
        if batch < 1:
            raise UserError(f"latency_batch: must be at least 1, got {batch}")
        self.input_shape, self.batch = tuple(input_shape), batch
        self.threads = threads or torch.get_num_threads()
        self.rounds = rounds

    def version(self) -> str:
        raise NotImplementedError

    def key(self) -> dict:
        return {"cpu": cpu_name(), "runtime": self.runtime, "version": self.version(), "threads": self.threads,
                "batch": self.batch, "input": list(self.input_shape)}

    def runner(self, model: nn.Module) -> Callable[[], None]:
        raise NotImplementedError

    def compare(self, dense: nn.Module, pruned: nn.Module) -> tuple[float, float, float]:
        fns = {"dense": self.runner(dense), "pruned": self.runner(pruned)}
        one = max(statistics.median(v) for v in interleaved_times(fns, repeats=3, warmup=2).values())
        times = interleaved_times(fns, repeats=self.rounds, warmup=0, inner=max(1, math.ceil(0.05 / max(one, 1e-6))))
        ratios = [d / p for d, p in zip(times["dense"], times["pruned"])]
        return statistics.median(times["dense"]), statistics.median(times["pruned"]), statistics.median(ratios)


class TorchTimer(_Timer):
    """PyTorch eager, inference mode, channels_last (kdprune's default layout)."""

    runtime = "torch"

    def __init__(self, *args, channels_last: bool = True, **kw):
        super().__init__(*args, **kw)
        self.channels_last = channels_last

    def version(self) -> str:
        return torch.__version__ + ("" if self.channels_last else " NCHW")

    def layer_seconds(self, shape, cin: int, cout: int) -> float:
        x = _layer_input(shape, cin, self.batch)
        fn = eager_forward(_layer(shape, cin, cout).eval(), x, self.channels_last and x.dim() == 4)
        with _threads(self.threads):
            return _seconds(fn)

    def runner(self, model: nn.Module) -> Callable[[], None]:
        import copy

        m = copy.deepcopy(model).cpu().eval()
        fn = eager_forward(m, torch.randn(self.batch, *self.input_shape), self.channels_last)

        def run():
            with _threads(self.threads):
                fn()

        return run


class _threads:
    """torch's thread count set for a block (the run's --threads by default: nothing changes)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.saved != self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.saved:
            torch.set_num_threads(self.saved)


def _ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise UserError(ORT_INSTALL_HINT) from None
    return onnxruntime


class OrtTimer(_Timer):
    """ONNX Runtime's CPU provider, all graph optimisations (BatchNorm folded, Conv+ReLU fused), no
    spin-waiting, ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ort = _ort()
        self.tmp = Path(tempfile.mkdtemp(prefix="kdprune-latency-"))

    def version(self) -> str:
        return self.ort.__version__

    def _session(self, model_bytes_or_path):
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return self.ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])

    def layer_seconds(self, shape, cin: int, cout: int) -> float:
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        x = _layer_input(shape, cin, self.batch).numpy()
        if shape.kind == "linear":
            w = numpy_helper.from_array(rng.standard_normal((cin, cout), dtype=np.float32), "W")
            b = numpy_helper.from_array(np.zeros(cout, np.float32), "B")
            nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"])]
        else:
            groups = cin if shape.depthwise else 1
            w = numpy_helper.from_array(rng.standard_normal((cout, cin // groups, *shape.kernel), dtype=np.float32), "W")
            b = numpy_helper.from_array(np.zeros(cout, np.float32), "B")  # BatchNorm, folded, is this bias
            nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=list(shape.kernel),
                                      strides=list(shape.stride), pads=[*shape.padding, *shape.padding],
                                      dilations=list(shape.dilation), group=groups),
                     helper.make_node("Relu", ["c"], ["y"])]
        graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = min(proto.ir_version, 10)
        sess = self._session(proto.SerializeToString())
        return _seconds(lambda: sess.run(None, {"x": x}))

    def runner(self, model: nn.Module) -> Callable[[], None]:
        import copy

        m = copy.deepcopy(model).cpu().eval()
        path = self.tmp / f"m{len(list(self.tmp.iterdir()))}.onnx"
        x = torch.randn(self.batch, *self.input_shape)
        _export(m, x, path)
        sess = self._session(str(path))
        xs = x.numpy()
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: xs})


def _export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """A fixed-shape export for timing: the TorchScript exporter (a fraction of a second) where this torch has
    it, else the torch.export one."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"], dynamo=False)
    except Exception:  # noqa: BLE001 - a torch without the TorchScript exporter
        from kdprune.deploy.exporting import onnx_export

        onnx_export(model, x, str(path))


def make_timer(runtime: str, input_shape: tuple[int, int, int], batch: int = 64, threads: int | None = None,
               channels_last: bool = True):
    """The :class:`~kdprune.pruning.latency.Timer` of ``runtime`` (``onnxruntime`` or ``torch``); a missing
    onnxruntime is one line naming what to install."""
    from kdprune.errors import check_choice

    check_choice("latency_runtime", runtime, RUNTIMES)
    if runtime == "torch":
        return TorchTimer(input_shape, batch, threads, channels_last=channels_last)
    return OrtTimer(input_shape, batch, threads)
