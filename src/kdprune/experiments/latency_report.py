"""``kdprune report --latency``: accuracy against latency measured on this machine, for channel pruning.

Every channel-pruned result is rebuilt from its ``widths.json`` (the weights do not change the time), each
distinct model is timed once in PyTorch eager at ``batch`` images, interleaved with the dense model of
the same architecture and input, and each result's speed-up is the dense median over its own. Results
of the unstructured twin (``--channel-twin``) are the dense architecture with zeros: they are timed as
that. The table and plot say on which CPU, with how many threads.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from kdprune.errors import UserError
from kdprune.experiments.plotstyle import level, method_colors, savefig, series_labels, style, variant_look
from kdprune.methods.registry import PAPER_METHOD
from kdprune.methods.result import channel_kind, is_channel_row


def _model_key(row: dict) -> tuple:
    """(arch, classes, in channels, image size, widths as JSON or "dense") of a result's model."""
    from kdprune.deploy.exporting import describe_source

    info = describe_source(Path(row["out"]))
    if not info.get("image_size"):
        raise UserError(f"cannot tell the input size of {row['out']} for --latency")
    widths = json.dumps(info["widths"], sort_keys=True) if info.get("widths") else "dense"
    return info["arch"], info["num_classes"], info["in_channels"], int(info["image_size"]), widths


def measure(rows: list[dict], batch: int = 64, repeats: int = 30, channels_last: bool = True,
            runtime: str = "torch") -> dict[int, tuple[float, float, float]]:
    """``id(row) -> (median seconds of the row's model, median seconds of its dense model, speed-up)`` for
    every channel-pruning row (and twin). Each distinct model is built once; all are timed interleaved,
    each sample long enough (about 50 ms) to average out scheduler noise, and the speed-up is the median
    over rounds of the dense-to-pruned ratio within a round, which cancels the machine's drift."""
    from kdprune.deploy.latency import eager_forward, interleaved_times
    from kdprune.deploy.runtimes import make_timer
    from kdprune.models import create_model
    from kdprune.pruning.structured import apply_widths

    keys = {id(r): _model_key(r) for r in rows if is_channel_row(r)}
    if not keys:
        raise UserError("--latency needs channel-pruning results (kdprune run --structure channel)")
    models = set(keys.values()) | {(*k[:4], "dense") for k in keys.values()}
    fns = {}
    torch.manual_seed(0)
    for arch, nc, in_ch, size, widths in sorted(models):
        m = create_model(arch, nc, in_ch)
        if widths != "dense":
            apply_widths(m, json.loads(widths))
        if runtime == "torch":
            fns[(arch, nc, in_ch, size, widths)] = eager_forward(m, torch.randn(batch, in_ch, size, size), channels_last)
        else:
            fns[(arch, nc, in_ch, size, widths)] = make_timer(runtime, (in_ch, size, size), batch).runner(m)
    one = max(statistics.median(v) for v in interleaved_times(fns, repeats=3, warmup=2).values())
    times = interleaved_times(fns, repeats=repeats, warmup=0, inner=max(1, math.ceil(0.05 / max(one, 1e-6))))
    out = {}
    for i, k in keys.items():
        own, dense = times[k], times[(*k[:4], "dense")]
        out[i] = (statistics.median(own), statistics.median(dense),
                  statistics.median(d / a for a, d in zip(own, dense)))
    return out


def latency_points(rows: list[dict], labels: dict[int, str], times: dict[int, tuple[float, float, float]]) -> dict:
    """``(dataset, arch, method, label, level) -> {top1 mean, ms mean, speedup mean, n}`` over seeds."""
    groups = defaultdict(list)
    for r in rows:
        if id(r) in times:
            groups[(r["dataset"], r["arch"], r["method"], labels[id(r)], float(r["target_sparsity"]))].append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        t = [times[id(r)] for r in rs]
        out[key] = {"top1": statistics.fmean(r["top1"] for r in rs), "n": len(rs),
                    "ms": statistics.fmean(a for a, _, _ in t) * 1e3,
                    "dense_ms": statistics.fmean(d for _, d, _ in t) * 1e3,
                    "speedup": statistics.fmean(x for _, _, x in t),
                    "dense_top1": statistics.fmean(r["dense_top1"] for r in rs), "kind": channel_kind(rs)}
    return out


def where(batch: int, channels_last: bool = True, runtime: str = "torch") -> str:
    from kdprune.hardware import cpu_name

    layout = "channels_last" if channels_last else "NCHW"
    name = f"PyTorch eager ({layout})" if runtime == "torch" else "ONNX Runtime (CPU)"
    return f"{name}, batch {batch}, {torch.get_num_threads()} thread(s) on {cpu_name()}"


def latency_markdown(points: dict, how: str, source: str = "report") -> str:
    """The table of accuracy against latency; ``how`` says where it was measured, ``source`` when: ``report``
    (every model re-timed by `kdprune report --latency`) or ``recorded`` (by each run, when it pruned)."""
    lines = []
    for dataset, arch in sorted({k[:2] for k in points}):
        keys = [k for k in points if k[:2] == (dataset, arch)]
        dense_ms = statistics.fmean(points[k]["dense_ms"] for k in keys)
        dense_top1 = statistics.fmean(points[k]["dense_top1"] for k in keys)
        when = ("Measured by `kdprune report --latency`" if source == "report" else
                 "Measured by each run when it pruned (recorded in its rows)")
        same = "in the same run" if source == "report" else "dense and pruned interleaved in each run"
        lines += [f"### {dataset}, {arch}: accuracy against measured latency ({how.split(',')[0]})", "",
                  f"{when} ({how}): every model timed in interleaved "
                  f"rounds, speed-up = the median over rounds of the dense model's time over the pruned one's "
                  f"(mean over seeds), {same}. Dense "
                  f"student: {dense_top1:.2f}% at {dense_ms:.2f} ms per batch.", "",
                  "| method (regime) | target | top-1 | vs dense | ms per batch | speed-up |",
                  "|---|---|---:|---:|---:|---:|"]
        for k in sorted(keys, key=lambda k: (k[4], -points[k]["top1"])):
            p = points[k]
            lines.append(f"| {k[2]} ({k[3]}) | {level(k[4], points[k]['kind'])} | {p['top1']:.2f} | {p['top1'] - p['dense_top1']:+.2f} "
                         f"| {p['ms']:.2f} | {p['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def plot_latency(points: dict, dataset: str, path: Path, how: str) -> None:
    """Top-1 against measured speed-up over dense, one line per method and regime through its MACs targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in points if k[0] == dataset]
    colors = method_colors(k[2] for k in keys)
    fig, ax = plt.subplots(figsize=(8.5, 6))
    for series in sorted({k[1:4] for k in keys}):
        pts = sorted((points[k]["speedup"], points[k]["top1"], k[4], points[k]["kind"]) for k in keys
                     if k[1:4] == series)
        ls, marker = style(series[2])
        marker, alpha = variant_look(series[2], marker)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=ls, marker=marker, color=colors[series[1]],
                alpha=alpha, linewidth=2.4 if series[1] == PAPER_METHOD else 1.5,
                label=f"{series[1]} ({series[2]})")
        for x, y, s, kind in pts:
            ax.annotate(level(s, kind).replace(" MACs", "").replace(" latency", ""), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color="dimgray")
    dense = statistics.fmean(points[k]["dense_top1"] for k in keys)
    ax.scatter([1.0], [dense], color="black", marker="*", s=120, zorder=4, label=f"dense student ({dense:.1f}%)")
    ax.set_xlabel("measured speed-up over dense (x)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=min(0.9, min(points[k]["speedup"] for k in keys) - 0.1))
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{dataset}: accuracy vs measured latency\n{how}", fontsize=10)
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)


def write_latency(rows: list[dict], out: Path, batch: int = 64, repeats: int = 30,
                  channels_last: bool = True, runtime: str = "torch") -> tuple[str, list[str]]:
    """The latency section of the report and its plots (one per dataset), every model timed now in
    ``runtime``; returns (markdown, files). Eager models run in ``channels_last`` (kdprune's training and
    evaluation default) or NCHW."""
    labels = series_labels(rows)
    points = latency_points(rows, labels, measure(rows, batch, repeats, channels_last, runtime))
    how = where(batch, channels_last, runtime)
    files = []
    for dataset in sorted({k[0] for k in points}):
        name = f"accuracy_vs_latency_{dataset}.png"
        plot_latency(points, dataset, out / name, how)
        files.append(name)
    return latency_markdown(points, how), files


def write_recorded_latency(rows: list[dict], out: Path) -> tuple[str, list[str]]:
    """Accuracy against the latency each channel run measured when it pruned (the rows' ``latency_*``), one
    table and plot per dataset and runtime (speed-ups measured in different runtimes are not comparable);
    returns (markdown, files), empty when no row carries a measured latency."""
    recorded = [r for r in rows if r.get("latency_speedup") is not None]
    labels = series_labels(rows)
    md, files = [], []
    for runtime in sorted({r["latency_runtime"] for r in recorded}):
        mine = [r for r in recorded if r["latency_runtime"] == runtime]
        times = {id(r): (r["latency_ms"] / 1e3, r["dense_latency_ms"] / 1e3, r["latency_speedup"]) for r in mine}
        points = latency_points(mine, labels, times)
        setups = sorted({(r["latency_batch"], r["latency_threads"], r["latency_cpu"]) for r in mine})
        name = "PyTorch eager" if runtime == "torch" else "ONNX Runtime (CPU)"
        how = f"{name}, " + "; ".join(f"batch {b}, {t} thread(s) on {c}" for b, t, c in setups)
        md.append(latency_markdown(points, how, source="recorded"))
        for dataset in sorted({k[0] for k in points}):
            fname = f"accuracy_vs_recorded_latency_{dataset}_{runtime}.png"
            plot_latency(points, dataset, out / fname, how)
            files.append(fname)
    return "\n".join(md), files
