"""``kdprune report RUNS... --out DIR``: tables and figures from the results.jsonl of one or more runs.

Writes ``results.csv`` (one row per result), ``results.md`` (mean ± sample std over seeds, the best
mean per sparsity in bold, and a cost table), ``accuracy_vs_sparsity_<dataset>.png`` (one line per
method and regime, error bars, a log-density axis so that 90–98% is readable, the dense student as a
dashed line) and ``radar.png`` (accuracy at 50/75/90/94/98% per method, best regime, as the paper's
Figure 1). Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path

from kdprune.errors import UserError
from kdprune.io import atomic_path, read_jsonl, write_text

CSV_COLUMNS = ["dataset", "arch", "teacher_arch", "method", "regime", "seed", "target_sparsity",
               "achieved_sparsity", "top1", "pruned_top1", "dense_top1", "teacher_top1", "epochs", "total_epochs",
               "images_fwd_bwd", "teacher_forwards", "scoring_batches", "wall_seconds", "total_wall_seconds",
               "nonzero_params", "total_params", "out"]
RADAR_LEVELS = (0.5, 0.75, 0.9, 0.94, 0.98)


def collect(paths: list[str | Path]) -> list[dict]:
    """Every result row under ``paths`` (run folders, searched recursively, or results.jsonl files)."""
    rows, seen = [], set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"no such run folder or file: {p}")
        files = [p] if p.is_file() else sorted(p.rglob("results.jsonl"))
        for f in files:
            try:
                for r in read_jsonl(f):
                    key = (r.get("out"), r["method"], r["regime"], r["seed"], r["target_sparsity"], r["dataset"])
                    if key not in seen:
                        seen.add(key)
                        rows.append(r)
            except (ValueError, KeyError) as e:
                raise UserError(f"{f} is not a kdprune results file ({e})") from None
    if not rows:
        raise UserError(f"no results found under {', '.join(map(str, paths))}")
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _series_label(rows: list[dict]) -> dict[int, str]:
    """The regime, plus the schedule ("N ep") where one method/regime was run with several schedules."""
    schedules = defaultdict(set)
    for r in rows:
        schedules[(r["dataset"], r["arch"], r["method"], r["regime"])].add(r.get("epochs"))
    return {id(r): r["regime"] + (f", {r.get('epochs')} ep" if len(schedules[(r["dataset"], r["arch"], r["method"],
                                                                               r["regime"])]) > 1 else "")
            for r in rows}


def aggregate(rows: list[dict]) -> dict[tuple, dict]:
    """(dataset, arch, method, regime label, sparsity) -> mean/std of top1 over seeds, and mean cost.

    Runs of one method and regime with different schedules are kept apart (the label gets "N ep")."""
    labels = _series_label(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["arch"], r["method"], labels[id(r)], float(r["target_sparsity"]))].append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        m, s = mean_std([r["top1"] for r in rs])
        out[key] = {"n": len(rs), "mean": m, "std": s, "seeds": sorted(r["seed"] for r in rs),
                    "dense": statistics.fmean(r["dense_top1"] for r in rs),
                    **{k: statistics.fmean(r.get(k) or 0 for r in rs)
                       for k in ("total_epochs", "images_fwd_bwd", "teacher_forwards", "total_wall_seconds")}}
    return out


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["dataset"], r["method"], r["regime"], r["target_sparsity"], r["seed"])):
        w.writerow(r)
    return buf.getvalue()


def _markdown(agg: dict) -> str:
    lines = []
    for dataset, arch in sorted({(k[0], k[1]) for k in agg}):
        keys = [k for k in agg if k[:2] == (dataset, arch)]
        series = sorted({(k[2], k[3]) for k in keys})
        sparsities = sorted({k[4] for k in keys})
        lines += [f"## {dataset}, {arch}: top-1 (%), mean ± std over seeds", "",
                  "| sparsity | " + " | ".join(f"{m} ({g})" for m, g in series) + " |",
                  "|---:|" + "---:|" * len(series)]
        for s in sparsities:
            cells = {sr: agg.get((dataset, arch, *sr, s)) for sr in series}
            best = max((c["mean"] for c in cells.values() if c), default=None)
            row = []
            for sr in series:
                c = cells[sr]
                if c is None:
                    row.append("–")
                    continue
                txt = f"{c['mean']:.2f} ± {c['std']:.2f}" + (f" (n={c['n']})" if c["n"] != 1 else "")
                row.append(f"**{txt}**" if c["mean"] == best else txt)
            lines.append(f"| {s:.0%} | " + " | ".join(row) + " |")
        ref_series = next((sr for sr in series if sr[0] == "teacher-guided"), series[0])
        lines += ["", f"### {dataset}, {arch}: compute to reach each sparsity (means over seeds)", "",
                  "| method (regime) | sparsity | epochs | images fwd+bwd | teacher forwards | wall s | "
                  f"images / {ref_series[0]} ({ref_series[1]}) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        ref = {s: agg[(dataset, arch, *ref_series, s)]["images_fwd_bwd"] for s in sparsities
               if (dataset, arch, *ref_series, s) in agg}
        for sr in series:
            for s in sparsities:
                c = agg.get((dataset, arch, *sr, s))
                if c:
                    ratio = f"{c['images_fwd_bwd'] / ref[s]:.2f}" if ref.get(s) else "–"
                    lines.append(f"| {sr[0]} ({sr[1]}) | {s:.0%} | {c['total_epochs']:.0f} | "
                                 f"{c['images_fwd_bwd']:,.0f} | {c['teacher_forwards']:,.0f} | "
                                 f"{c['total_wall_seconds']:.1f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")


def _density_axis(x: float) -> float:
    return -math.log10(max(1.0 - x, 1e-6))


def plot_accuracy(agg: dict, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in agg if k[0] == dataset]
    fig, ax = plt.subplots(figsize=(8, 5))
    for arch, method, regime in sorted({(k[1], k[2], k[3]) for k in keys}):
        pts = sorted((k[4], agg[k]) for k in keys if k[1:4] == (arch, method, regime))
        ax.errorbar([_density_axis(s) for s, _ in pts], [c["mean"] for _, c in pts], yerr=[c["std"] for _, c in pts],
                    marker="o", capsize=3, linewidth=1.8, label=f"{method} ({regime})")
    # the dense reference of the paper's method when present (other recipes have other dense references)
    ref = [k for k in keys if k[2] == "teacher-guided"] or keys
    dense = statistics.fmean(agg[k]["dense"] for k in ref)
    ax.axhline(dense, color="gray", linestyle="--", linewidth=1,
               label=f"dense student of {ref[0][2]} ({dense:.1f}%)")
    ticks = sorted({k[4] for k in keys})
    ax.set_xticks([_density_axis(s) for s in ticks])
    ax.set_xticklabels([f"{s:.0%}" for s in ticks])
    ax.set_xlabel("sparsity (log-density axis)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs sparsity (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower left")
    _savefig(fig, path)
    plt.close(fig)


def plot_radar(agg: dict, path: Path, levels=RADAR_LEVELS) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[str, dict[float, float]] = defaultdict(dict)
    for (dataset, arch, method, regime, s), c in agg.items():
        best[method][s] = max(best[method].get(s, -1.0), c["mean"])
    if not any(all(lv in v for lv in levels) for v in best.values()):
        # the paper's levels were not run: use those of the method with the most sparsities (at least 3)
        richest = max(best.values(), key=len)
        levels = tuple(sorted(richest))
        if len(levels) < 3:
            return False
    methods = {m: v for m, v in best.items() if all(lv in v for lv in levels)}
    angles = [2 * math.pi * i / len(levels) for i in range(len(levels))] + [0.0]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="polar")
    lo = min(min(v.values()) for v in methods.values())
    for m, v in sorted(methods.items()):
        vals = [v[lv] for lv in levels] + [v[levels[0]]]
        ax.plot(angles, vals, marker="o", linewidth=1.8, label=m)
        ax.fill(angles, vals, alpha=0.08)
    ax.set_xticks(angles[:-1])
    ax.set_xticklabels([f"{lv:.0%}" for lv in levels])
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_title("top-1 (%) at each sparsity, best regime per method", pad=20)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=9)
    _savefig(fig, path)
    plt.close(fig)
    return True


def write_report(paths: list[str | Path], out: str | Path) -> dict:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    rows = collect(paths)
    agg = aggregate(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", _csv(rows))
    md = _markdown(agg)
    write_text(out / "results.md", md)
    written = ["results.csv", "results.md"]
    for dataset in sorted({k[0] for k in agg}):
        name = f"accuracy_vs_sparsity_{dataset}.png"
        plot_accuracy(agg, dataset, out / name)
        written.append(name)
    if plot_radar(agg, out / "radar.png"):
        written.append("radar.png")
    return {"rows": len(rows), "files": written, "markdown": md}
