"""Channel pruning to a measured latency target (``--target-latency Nx``).

MACs are not latency: a channel at high resolution, or in a thin layer, costs more time per MAC than one in
a deep, wide layer, and a runtime's kernels run some widths faster than others. After HALP (Shen et al.,
NeurIPS 2022), kdprune prunes against a latency model measured on the machine, in the runtime the model
will run in:

1. **the table**: each prunable layer's time at candidate input and output widths (a grid per dependency
   group: multiples of 4 up to 32 channels, 8 up to 64, about 8 widths beyond), measured once per layer
   shape by a :class:`Timer` and cached on disk, keyed by the CPU, the runtime and its version, the thread
   count, the batch and the input size (:func:`cache_key`); a changed key measures anew;
2. **the allocation** (:func:`allocate`): from the full widths, repeatedly remove from one group its least
   important chunk (a grid step of channels) that saves the most predicted time per unit of group
   importance lost, until the predicted latency meets the budget; then put back, most important first, any
   chunk that still fits. The predicted speed-up is the table's sum over the layers at full widths over its
   sum at the pruned widths (measured on a quiet 2-core Xeon, ResNet-20 at 16x16, ONNX Runtime batch 64: within
   3% of the measured speed-up for random widths);
3. **the check** (:func:`plan_latency`): the pruned model and the dense one are timed end to end,
   interleaved, and the budget is corrected (tightened, or loosened when there is room) until the delivered
   model meets the target as measured, at the least pruning found. Predicted and measured speed-ups are
   both recorded.

The :class:`Timer` is the only part that touches a clock (:mod:`kdprune.deploy.runtimes` has the PyTorch
eager and ONNX Runtime ones); tests inject a deterministic one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn

from kdprune.errors import UserError


@dataclass(frozen=True)
class LayerShape:
    """What a layer's time depends on besides its widths: kind, kernel, stride, padding, dilation,
    depthwise or not, and the input's height and width."""

    kind: str  # conv | linear
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    depthwise: bool = False
    in_hw: tuple[int, int] = (1, 1)

    def key(self, cin: int, cout: int) -> str:
        k, s, p, d, h = self.kernel, self.stride, self.padding, self.dilation, self.in_hw
        return (f"{self.kind}{'-dw' if self.depthwise else ''} k{k[0]}x{k[1]} s{s[0]}x{s[1]} p{p[0]}x{p[1]} "
                f"d{d[0]}x{d[1]} in{h[0]}x{h[1]} {cin}->{cout}")


class Timer(Protocol):
    """Measures on this machine, in one runtime, at one batch size and thread count."""

    def key(self) -> dict:
        """What the measurements depend on (the cache key): cpu, runtime, version, threads, batch, input."""

    def layer_seconds(self, shape: LayerShape, cin: int, cout: int) -> float:
        """One layer (with its BatchNorm and activation where the runtime does not fuse them) at these widths."""

    def compare(self, dense: nn.Module, pruned: nn.Module) -> tuple[float, float, float]:
        """``(dense seconds, pruned seconds, speed-up)`` of whole models, timed interleaved."""


# ----------------------------------------------------------------------------------------- the table

def cache_dir() -> Path:
    """``$KDPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdprune``, else ``~/.cache/kdprune``."""
    if os.environ.get("KDPRUNE_CACHE_DIR"):
        return Path(os.environ["KDPRUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdprune"


def cache_key(timer_key: dict) -> str:
    """A short hash of everything a measured table depends on; another CPU, runtime version, thread count,
    batch or input size is another table."""
    return hashlib.sha256(json.dumps(timer_key, sort_keys=True).encode()).hexdigest()[:16]


class LatencyTable:
    """Measured layer times, keyed by ``LayerShape.key(cin, cout)``, kept in the cache file of the timer's key."""

    def __init__(self, timer: Timer, path: Path | None = None):
        self.timer, self.key = timer, timer.key()
        self.path = path or cache_dir() / "latency" / f"{cache_key(self.key)}.json"
        self.entries: dict[str, float] = {}
        self.measured = 0  # entries measured (not found in the cache) by this table
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("key") == self.key:
                    self.entries = {k: float(v) for k, v in data.get("entries", {}).items()}
            except (OSError, ValueError):
                pass  # unreadable: measured again

    def seconds(self, shape: LayerShape, cin: int, cout: int) -> float:
        k = shape.key(cin, cout)
        if k not in self.entries:
            self.entries[k] = float(self.timer.layer_seconds(shape, cin, cout))
            self.measured += 1
        return self.entries[k]

    def save(self) -> None:
        from kdprune.io import write_json

        if self.measured:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"key": self.key, "entries": self.entries})


# ----------------------------------------------------------------------------------------- the model

@dataclass
class Layer:
    """A prunable layer: its shape, its full widths, and the groups (indices) that set its widths."""

    name: str
    shape: LayerShape
    cin: int
    cout: int
    in_group: int | None = None
    out_group: int | None = None


@dataclass
class Problem:
    """What the allocation works on: the layers, each group's size, floor, step and channel importances."""

    layers: list[Layer]
    sizes: list[int]
    keep_min: list[int]
    steps: list[int]
    importance: list[list[float]]  # per group, per channel
    roots: list[str] = field(default_factory=list)
    rounded: bool = False  # the steps are --channel-round: every width a multiple of it (or the full width)

    def floor_widths(self) -> list[int]:
        """Every group at its floor: the fastest model the options allow."""
        return [min(self.widths(g)) for g in range(len(self.sizes))]

    def widths(self, g: int) -> list[int]:
        """The widths group ``g`` may take: its size, then down by its step to its floor (and the floor itself
        when it lies below the last step and the steps are not a rounding the user asked for)."""
        n, s, lo = self.sizes[g], self.steps[g], self.keep_min[g]
        out = [n] + [w for w in range((n - 1) // s * s, 0, -s) if w >= lo]
        return out + [lo] if out[-1] > lo and not self.rounded else out


def grid_step(n: int, round_to: int = 1) -> int:
    """The width step of a group of ``n`` channels: ``round_to`` when given (> 1), else 4 up to 32 channels,
    else about n/8 rounded up to a multiple of 4 (8 for 64 channels): about 8 widths a group."""
    if round_to > 1:
        return round_to
    return 4 if n <= 32 else 4 * math.ceil(n / 32)


def build_problem(model: nn.Module, example_input: torch.Tensor, groups: list, round_to: int = 1) -> Problem:
    """The layers of ``model`` and the groups (``kdprune.pruning.structured.channel_groups``) that set their
    widths, with each layer's input size recorded on ``example_input``."""
    from kdprune.pruning.structured import _IN, _OUT

    from kdprune.models.macs import trace_layers

    in_hw: dict[nn.Module, tuple[int, int]] = {}
    trace_layers(model, example_input,
                 lambda m, i, o: in_hw.__setitem__(m, tuple(i[0].shape[2:4]) if i[0].dim() == 4 else (1, 1)))
    layers: dict[nn.Module, Layer] = {}
    for name, m in model.named_modules():
        if m not in in_hw:
            continue
        if isinstance(m, nn.Conv2d):
            dw = m.groups > 1 and m.groups == m.in_channels
            shape = LayerShape("conv", tuple(m.kernel_size), tuple(m.stride), tuple(m.padding), tuple(m.dilation), dw,
                               in_hw[m])
            layers[m] = Layer(name, shape, m.in_channels, m.out_channels)
        else:
            layers[m] = Layer(name, LayerShape("linear"), m.in_features, m.out_features)
    for gi, g in enumerate(groups):
        for dep, _ in g.group:
            layer = layers.get(dep.layer)
            if layer is None:
                continue
            if dep.pruning_fn in _OUT or (layer.shape.depthwise and dep.pruning_fn in _IN):
                layer.out_group = gi
                if layer.shape.depthwise:
                    layer.in_group = gi
            elif dep.pruning_fn in _IN:
                layer.in_group = gi
    return Problem(list(layers.values()), [g.size for g in groups], [g.keep_min for g in groups],
                   [grid_step(g.size, round_to) for g in groups], [g.importance.tolist() for g in groups],
                   [g.root for g in groups], round_to > 1)


def predict(problem: Problem, table: Callable[[LayerShape, int, int], float], widths: list[int]) -> float:
    """The table's sum over the layers at ``widths`` (per group); a depthwise conv's cin is its cout."""
    total = 0.0
    for L in problem.layers:
        cin = widths[L.in_group] if L.in_group is not None else L.cin
        cout = widths[L.out_group] if L.out_group is not None else L.cout
        total += table(L.shape, cin, cout)
    return total


def measure_table(problem: Problem, table: LatencyTable) -> None:
    """Every entry the allocation may ask for: each layer at every width pair its groups allow."""
    for L in problem.layers:
        cins = problem.widths(L.in_group) if L.in_group is not None else [L.cin]
        couts = problem.widths(L.out_group) if L.out_group is not None else [L.cout]
        for cin in cins:
            for cout in couts:
                if L.shape.depthwise and cin != cout:
                    continue
                table.seconds(L.shape, cin, cout)
    table.save()


def _order(problem: Problem, g: int) -> list[int]:
    """Group ``g``'s channels, least important first (ties: lower index first)."""
    imp = problem.importance[g]
    return sorted(range(len(imp)), key=lambda c: (imp[c], c))


def allocate(problem: Problem, table: Callable[[LayerShape, int, int], float], budget: float) -> list[int] | None:
    """Widths per group whose predicted latency (the table's sum over the layers) is at most ``budget``, keeping
    as much group importance as the greedy finds (module docstring); None when even every group at its floor
    is predicted slower than the budget."""
    n_groups = len(problem.sizes)
    orders = [_order(problem, g) for g in range(n_groups)]
    lost = [[0.0] for _ in range(n_groups)]  # lost[g][k]: importance of g's k least important channels
    for g in range(n_groups):
        for c in orders[g]:
            lost[g].append(lost[g][-1] + problem.importance[g][c])
    widths = list(problem.sizes)

    def lat(w):
        return predict(problem, table, w)

    cur = lat(widths)
    while cur > budget + 1e-12:
        best = None
        for g in range(n_groups):  # every narrower width of every group: a measured table need not be monotone
            for w_new in problem.widths(g):
                if w_new >= widths[g]:
                    continue
                trial = widths.copy()
                trial[g] = w_new
                t = lat(trial)
                saved = cur - t
                if saved <= 0:
                    continue
                imp = lost[g][problem.sizes[g] - w_new] - lost[g][problem.sizes[g] - widths[g]]
                key = (saved / max(imp, 1e-12), saved, -g)
                if best is None or key > best[0]:
                    best = (key, g, w_new, t)
        if best is None:
            return None
        _, g, widths[g], cur = best
    improved = True
    while improved:  # put back what still fits, the most important chunk first
        improved = False
        wider = [(lost[g][problem.sizes[g] - widths[g]] - lost[g][problem.sizes[g] - w], g, w)
                 for g in range(n_groups) for w in problem.widths(g) if w > widths[g]]
        for _, g, w in sorted(wider, reverse=True):
            trial = widths.copy()
            trial[g] = w
            if lat(trial) <= budget + 1e-12:
                widths, improved = trial, True
                break
    return widths


def removals(problem: Problem, widths: list[int]) -> dict[str, list[int]]:
    """Per group root, the channels that go: its ``size - width`` least important."""
    out = {}
    for g, w in enumerate(widths):
        gone = sorted(_order(problem, g)[:problem.sizes[g] - w])
        if gone:
            out[problem.roots[g]] = gone
    return out


# ----------------------------------------------------------------------------------------- the plan

@dataclass
class LatencyResult:
    """What a latency-targeted (or a measured MACs-targeted) plan records."""

    runtime: str
    batch: int
    threads: int
    cpu: str
    dense_ms: float
    pruned_ms: float
    speedup: float  # measured: the median over interleaved rounds of dense time / pruned time
    target: float | None = None
    predicted_speedup: float | None = None
    table_entries: int = 0
    measured_entries: int = 0  # entries measured by this plan (the rest came from the cache)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_factor(text: str | float) -> float:
    """``"2x"``, ``"2"`` or ``2.0`` -> 2.0: the speed-up a latency target asks for (above 1)."""
    from kdprune.pruning.structured import parse_target

    return parse_target(text, "target_latency", "a speed-up factor like 2x or 3x", "the model must get faster")


def describe(key: dict) -> str:
    """``onnxruntime 1.23, batch 64, 2 threads, 16x16 input, on <cpu>``."""
    size = "x".join(map(str, key["input"][1:]))
    return (f"{key['runtime']} {key['version']}, batch {key['batch']}, {key['threads']} thread"
            f"{'s' * (key['threads'] > 1)}, {size} input, on {key['cpu']}")


def out_of_reach(target: float, floor: float, speedup: float, key: dict) -> UserError:
    """The one-line error for a latency target above what every group at its channel floor measures."""
    return UserError(f"--target-latency {target:g}x is out of reach: with every group at its channel floor "
                     f"({floor:g}) the model is {speedup:.2f}x faster as measured ({describe(key)}); ask for at "
                     f"most {math.floor(speedup * 100) / 100:g}x, or lower --channel-floor")


def plan_latency(model: nn.Module, example_input: torch.Tensor, scores: dict[str, torch.Tensor], target: float,
                 timer: Timer, *, options=None, log: Callable[[str], None] = lambda m: None, attempts: int = 8):
    """A :class:`~kdprune.pruning.structured.ChannelPlan` whose pruned model is ``target`` times faster than
    ``model`` as ``timer`` measures it, removing as little group importance as the search finds; its
    ``latency`` holds the measured and predicted figures. ``options``: the floor, width step and stem
    (:class:`~kdprune.pruning.structured.ChannelOptions`; its defaults when None). ``model`` is not changed."""
    import copy

    from kdprune.models.macs import count_macs
    from kdprune.pruning.structured import ChannelOptions, ChannelPlan, _apply, channel_groups, count_params

    if not target > 1.0:
        raise UserError(f"target_latency: the model must get faster by a factor above 1x, got {target:g}x")
    options = options or ChannelOptions()
    groups = channel_groups(model, example_input, scores, options)
    problem = build_problem(model, example_input, groups, options.round_to)
    key = timer.key()
    table = LatencyTable(timer)
    measure_table(problem, table)
    log(f"latency table: {len(table.entries)} layer timings ({table.measured} measured now, the rest cached in "
        f"{table.path}) for {describe(key)}")
    full = predict(problem, table.seconds, problem.sizes)
    floor_w = problem.floor_widths()
    tried: dict[float, tuple] = {}

    def attempt(c: float):
        """Allocate for the predicted speed-up target*c (beyond what the floor allows in prediction: the floor
        itself), build it and time it against the dense model."""
        if c not in tried:
            w = allocate(problem, table.seconds, full / (target * c)) or floor_w
            pruned = _apply(copy.deepcopy(model), example_input, removals(problem, w))
            tried[c] = (w, pruned, timer.compare(model, pruned), full / predict(problem, table.seconds, w))
        return tried[c]

    c, ok, fail = 1.0, None, None
    for _ in range(attempts):
        w, pruned, measured, predicted = attempt(c)
        speedup = measured[2]
        log(f"  budget x{c:.3f}: predicted {predicted:.2f}x, measured {speedup:.2f}x (target {target:g}x)")
        if speedup >= target:
            ok = c if ok is None or c < ok else ok
        else:
            fail = c if fail is None or c > fail else fail
            if w == floor_w:
                raise out_of_reach(target, options.floor, speedup, key)
        if ok is not None and fail is not None:
            if ok / fail - 1 < 0.02:  # close enough: the least pruning that met the target
                break
            c = math.sqrt(ok * fail)
        elif ok is not None:  # met: try less pruning once the measured margin says there is room
            c = ok * max(target / speedup, 0.7)
            if c in tried or speedup < target * 1.02:
                break
        else:  # missed: tighten by the measured shortfall
            c = fail * min(target / speedup * 1.02, 1.6)
    if ok is None:
        best = max((v[2][2] for v in tried.values()), default=0.0)
        raise UserError(f"--target-latency {target:g}x was not met in {attempts} measured tries (best {best:.2f}x, "
                        f"{describe(key)}); the machine may be busy: run it alone, or ask for less")
    w, pruned, (d, p, speedup), predicted = tried[ok]
    plan = ChannelPlan(removals(problem, w), count_macs(model, example_input)[0], count_macs(pruned, example_input)[0],
                       count_params(model), count_params(pruned))
    plan.latency = LatencyResult(key["runtime"], key["batch"], key["threads"], key["cpu"], d * 1e3, p * 1e3, speedup,
                                 target, predicted, len(table.entries), table.measured).to_dict()
    log(f"latency target {target:g}x: predicted {predicted:.2f}x, measured {speedup:.2f}x "
        f"({d * 1e3:.2f} -> {p * 1e3:.2f} ms per batch of {key['batch']})")
    return plan


def measure_plan(model: nn.Module, pruned: nn.Module, timer: Timer) -> dict:
    """The measured latency of a pruned model against its dense one (a MACs- or parameter-targeted plan)."""
    key = timer.key()
    d, p, speedup = timer.compare(model, pruned)
    return LatencyResult(key["runtime"], key["batch"], key["threads"], key["cpu"], d * 1e3, p * 1e3, speedup).to_dict()
