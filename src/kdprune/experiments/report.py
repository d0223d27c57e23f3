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
from kdprune.io import atomic_path, find_up, read_json, read_jsonl, write_text

CSV_COLUMNS = ["dataset", "arch", "teacher_arch", "method", "regime", "variant", "seed", "target_sparsity",
               "achieved_sparsity", "top1", "pruned_top1", "dense_top1", "teacher_top1", "epochs", "total_epochs",
               "images_fwd_bwd", "teacher_forwards", "scoring_batches", "wall_seconds", "total_wall_seconds",
               "nonzero_params", "total_params", "teacher_images_fwd_bwd", "out"]
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


POST_TRAINING = ("teacher-guided", "magnitude", "random")


def class_lines(rows: list[dict], most: int = 20) -> str:
    """One line per dataset naming its classes, from the ``dataset.json`` its runs wrote (none for runs made
    before kdprune 0.2 wrote it)."""
    lines, done = [], set()
    for r in rows:
        ds, out = r.get("dataset"), r.get("out")
        if ds in done or not out:
            continue
        f = find_up(out, "dataset.json")
        if f is None:
            continue
        names = read_json(f).get("classes") or []
        if names:
            shown = ", ".join(map(str, names[:most])) + (f", ... ({len(names) - most} more)" if len(names) > most else "")
            lines.append(f"- {ds}: {len(names)} classes: {shown}")
        done.add(ds)
    return ("Classes (from each run's dataset.json):\n\n" + "\n".join(lines) + "\n") if lines else ""


def teacher_images(row: dict) -> int:
    """Images of the teacher's training counted in ``row``'s ``images_fwd_bwd`` (rows written before the
    field existed: read from the run's ``teacher/metrics.json``)."""
    if row.get("teacher_images_fwd_bwd") is not None:
        return int(row["teacher_images_fwd_bwd"])
    if row["method"] not in POST_TRAINING and row["regime"] != "kd":
        return 0
    f = Path(row.get("out") or ".").parents[1] / "teacher" / "metrics.json"
    try:
        import json

        return int(json.loads(f.read_text()).get("images_fwd_bwd", 0))
    except (OSError, ValueError):
        return 0


def _channel_only(agg: dict, dataset: str, arch: str | None = None) -> str:
    """``"macs"`` (or ``"params"``) when every result of ``dataset`` (and ``arch``) is channel pruning to a
    MACs (parameter) target: levels are MACs reductions (fractions of parameters); else ``""``."""
    kinds = {agg[k].get("channel") for k in agg if k[0] == dataset and (arch is None or k[1] == arch)}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else ""


def is_channel_row(row: dict) -> bool:
    """A result of channel pruning, or of its unstructured twin (``--channel-twin``)."""
    return row.get("structure") == "channel" or row.get("twin_of") == "channel"


def channel_kind(rows: list[dict]) -> str | None:
    """``"macs"``/``"params"`` when all ``rows`` are channel pruning (or its twin) to that kind of target."""
    if not all(map(is_channel_row, rows)):
        return None
    return "params" if all(r.get("target_macs") is None for r in rows) else "macs"


def level(s: float, channel: bool | str) -> str:
    """A column or tick label: ``90%`` of the weights, ``2x MACs`` (fewer MACs, channel pruning) or
    ``50% params`` (of the parameters removed, channel pruning to ``--target-params``)."""
    if channel == "params":
        return f"{s:.0%} params"
    return f"{1 / (1 - s):.3g}x MACs" if channel else f"{s:.0%}"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _series_label(rows: list[dict]) -> dict[int, str]:
    """The regime, then the row's variant (retraining schedule, collapse guards) where a method was run
    with several, then the budget ("N ep") where one method/regime/variant was run with several."""
    variants, schedules = defaultdict(set), defaultdict(set)
    for r in rows:
        variants[(r["dataset"], r["arch"], r["method"])].add(r.get("variant") or "")
        schedules[(r["dataset"], r["arch"], r["method"], r["regime"], r.get("variant") or "")].add(r.get("epochs"))
    labels = {}
    for r in rows:
        v = r.get("variant") or ""
        label = r["regime"] + (f", {v}" if v and len(variants[(r["dataset"], r["arch"], r["method"])]) > 1 else "")
        if len(schedules[(r["dataset"], r["arch"], r["method"], r["regime"], v)]) > 1:
            label += f", {r.get('epochs')} ep"
        labels[id(r)] = label
    return labels


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
                    "teacher_images": statistics.fmean(teacher_images(r) for r in rs),
                    "channel": channel_kind(rs),
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


def load_published(path: str | Path | None) -> dict:
    """``{dataset: {method: {sparsity: top1}}}`` from a YAML file of published numbers (optional)."""
    if not path:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return {str(d): {str(m): {float(s): float(v) for s, v in sp.items()} for m, sp in ms.items()}
                for d, ms in data.items()}
    except FileNotFoundError:
        raise UserError(f"published numbers file not found: {path}") from None
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        raise UserError(f"{path}: expected dataset: {{method: {{sparsity: top1}}}}") from None


def _cell(c: dict | None, best: float | None, n_usual: int) -> str:
    if c is None:
        return "–"
    spread = f" ± {c['std']:.2f}" if c["n"] > 1 else ""  # one seed has no spread to show
    txt = f"{c['mean']:.2f}{spread}" + (f" (n={c['n']})" if c["n"] != n_usual else "")
    return f"**{txt}**" if c["mean"] == best else txt


def _markdown(agg: dict, published: dict | None = None) -> str:
    """One accuracy table (a row per method and regime, a column per sparsity) and one cost table per
    dataset and arch; published numbers, when given, are extra rows."""
    published = published or {}
    lines = []
    for dataset, arch in sorted({(k[0], k[1]) for k in agg}):
        keys = [k for k in agg if k[:2] == (dataset, arch)]
        series = sorted({(k[2], k[3]) for k in keys})
        pub = published.get(dataset, {})
        sparsities = sorted({k[4] for k in keys} | {s for v in pub.values() for s in v})
        best = {s: max((agg[k]["mean"] for k in keys if k[4] == s), default=None) for s in sparsities}
        n_usual = statistics.mode(agg[k]["n"] for k in keys)
        what = f"mean ± std over {n_usual} seeds" if n_usual > 1 else "one seed"
        lines += [f"## {dataset}, {arch}: top-1 (%), {what} "
                  "(n=k where a cell has another count; best per sparsity in bold)", "",
                  "| method (regime) | " + " | ".join(level(s, _channel_only(agg, dataset, arch)) for s in sparsities)
                  + " |",
                  "|---|" + "---:|" * len(sparsities)]
        for sr in series:
            cells = [_cell(agg.get((dataset, arch, *sr, s)), best[s], n_usual) for s in sparsities]
            lines.append(f"| {sr[0]} ({sr[1]}) | " + " | ".join(cells) + " |")
        for m in sorted(pub):
            cells = [f"{pub[m][s]:.2f}" if s in pub[m] else "–" for s in sparsities]
            lines.append(f"| {m} (published) | " + " | ".join(cells) + " |")
        ours = sorted({k[4] for k in keys})
        ref_series = next((sr for sr in series if sr[0] == "teacher-guided"), series[0])
        ref = {s: agg[(dataset, arch, *ref_series, s)]["images_fwd_bwd"] for s in ours
               if (dataset, arch, *ref_series, s) in agg}
        ch = _channel_only(agg, dataset, arch)
        lines += ["", f"### {dataset}, {arch}: compute (means over seeds)", "",
                  f"Epochs, images through forward+backward, teacher forwards and wall seconds to reach the "
                  f"highest level ({level(ours[-1], ch)}; one-shot methods pay the same at every level, iterative "
                  f"ones pay per round); then images relative to {ref_series[0]} ({ref_series[1]}) at each "
                  f"level ({', '.join(level(s, ch) for s in ours)}).", "",
                  "| method (regime) | epochs | images fwd+bwd | teacher forwards | wall s | "
                  f"images / {ref_series[0]} ({ref_series[1]}) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for sr in series:
            have = [s for s in ours if (dataset, arch, *sr, s) in agg]
            top = agg[(dataset, arch, *sr, have[-1])]
            ratios = " · ".join(f"{agg[(dataset, arch, *sr, s)]['images_fwd_bwd'] / ref[s]:.2f}" if ref.get(s) else "–"
                                for s in have)
            lines.append(f"| {sr[0]} ({sr[1]}) | {top['total_epochs']:.0f} | {top['images_fwd_bwd']:,.0f} | "
                         f"{top['teacher_forwards']:,.0f} | {top['total_wall_seconds']:.1f} | {ratios} |")
        lines.append("")
    return "\n".join(lines)


COMPUTE_LEVELS = (0.9, 0.98)


def _compute_points(agg: dict, dataset: str, arch: str, s: float) -> list[tuple]:
    """(method, label, top-1 mean, std, images with the teacher, images without it) at sparsity ``s``."""
    pts = []
    for (d, a, method, label, sp), c in agg.items():
        if (d, a) == (dataset, arch) and abs(sp - s) < 1e-9:
            pts.append((method, label, c["mean"], c["std"], c["images_fwd_bwd"],
                        c["images_fwd_bwd"] - c["teacher_images"]))
    return sorted(pts, key=lambda p: p[4])


def compute_markdown(agg: dict) -> str:
    """Accuracy against compute at fixed sparsity, and the cheapest one-shot budget that comes within
    0.5 points of IMP at 90% with its compute ratio to IMP and COLT."""
    lines = []
    for dataset, arch in sorted({(k[0], k[1]) for k in agg}):
        for s in COMPUTE_LEVELS:
            pts = _compute_points(agg, dataset, arch, s)
            if not pts:
                continue
            lines += [f"### {dataset}, {arch}: accuracy against compute at {s:.0%}", "",
                      "Images through forward+backward, with the teacher's training counted and without it (a "
                      "pre-trained teacher); cheapest first.", "",
                      "| method (variant) | top-1 | images, teacher counted | images, teacher not counted |",
                      "|---|---:|---:|---:|"]
            for method, label, mean, std, imgs, no_t in pts:
                lines.append(f"| {method} ({label}) | {mean:.2f} ± {std:.2f} | {imgs:,.0f} | {no_t:,.0f} |")
            lines.append("")
            if abs(s - 0.9) < 1e-9:
                lines += [_cheapest_within(pts), ""]
    return "\n".join(lines)


def _cheapest_within(pts: list[tuple], margin: float = 0.5) -> str:
    imp = [p for p in pts if p[0] == "imp"]
    colt = [p for p in pts if p[0] == "colt"]
    if not imp:
        return "No IMP result at this sparsity, so no comparison with it."
    ref = max(imp, key=lambda p: p[2])
    ref_colt = max(colt, key=lambda p: p[2]) if colt else None

    def cost(p: tuple) -> str:
        out = (f"{p[4] / ref[4]:.3f} of IMP's images with the teacher's training counted "
               f"({p[5] / ref[4]:.3f} with a pre-trained teacher)")
        if ref_colt:
            out += f", {p[4] / ref_colt[4]:.3f} of COLT's ({p[5] / ref_colt[4]:.3f})"
        return out

    ok = [p for p in pts if p[0] == "teacher-guided" and p[2] >= ref[2] - margin]
    if not ok:
        best = max((p for p in pts if p[0] == "teacher-guided"), key=lambda p: p[2], default=None)
        gap = (f"; its best ({best[1]}, {best[2]:.2f}%) is {ref[2] - best[2]:.2f} points below, at {cost(best)}"
               if best else "")
        return f"No teacher-guided budget comes within {margin} points of IMP ({ref[2]:.2f}%){gap}."
    cheap = min(ok, key=lambda p: (p[4], -p[2]))  # the cheapest; among equally cheap, the most accurate
    return (f"Cheapest teacher-guided setting within {margin} points of IMP ({ref[2]:.2f}%): **{cheap[1]}** at "
            f"{cheap[2]:.2f}%, {cost(cheap)}.")


def plot_compute(agg: dict, dataset: str, path: Path) -> bool:
    """Top-1 against images (log axis) at 90% and 98%, teacher counted (filled) and not (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({k[1] for k in agg if k[0] == dataset})
    levels = [s for s in COMPUTE_LEVELS if any(_compute_points(agg, dataset, a, s) for a in archs)]
    if not levels:
        return False
    colors = _colors(k[2] for k in agg if k[0] == dataset)
    fig, axes = plt.subplots(1, len(levels), figsize=(7 * len(levels), 5.8), squeeze=False)
    for ax, s in zip(axes[0], levels):
        for arch in archs:
            for method, label, mean, std, imgs, no_t in _compute_points(agg, dataset, arch, s):
                ls, marker = _style(label)
                color = _series_color(colors, method, label)
                ax.errorbar([imgs], [mean], yerr=[std], color=color, marker=marker, markersize=7,
                            capsize=3, linestyle="none", label=f"{method} ({label})")
                ax.annotate(label, (imgs, mean), textcoords="offset points", xytext=(6, 4), fontsize=7,
                            color=color)
                if no_t < imgs:
                    ax.plot([no_t, imgs], [mean, mean], color=color, linewidth=0.8, alpha=0.6)
                    ax.plot([no_t], [mean], marker=marker, markersize=7, markerfacecolor="white",
                            color=color, linestyle="none")
        ax.set_xscale("log")
        ax.set_xlabel("images through forward+backward (hollow: teacher's training not counted)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{dataset}: {s:.0%} sparsity", fontsize=12)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.025 * math.ceil(len(uniq) / 3), 1, 1))
    _savefig(fig, path)
    plt.close(fig)
    return True


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")


def _density_axis(x: float) -> float:
    return -math.log10(max(1.0 - x, 1e-6))


_REGIME_STYLE = {"plain": ("-", "o"), "kd": ("--", "s"), "sd": (":", "^")}


def _colors(methods) -> dict[str, tuple]:
    """One colour per method, the same in every plot: tab20's ten dark shades, then its ten light ones
    (teacher-guided always gets the first)."""
    import matplotlib

    tab20 = list(matplotlib.colormaps["tab20"].colors)
    palette = tab20[0::2] + tab20[1::2] + list(matplotlib.colormaps["tab20b"].colors)
    ordered = sorted(set(methods), key=lambda m: (m != "teacher-guided", m))  # the paper's method: the first
    return {m: palette[i % len(palette)] for i, m in enumerate(ordered)}


def _variant_look(label: str, marker: str) -> tuple[str, float]:
    """Retraining schedules of one method apart: finetune faint crosses, lr-rewind diamonds, restart as is;
    collapse guards as left triangles (progressive), up triangles (floor) and stars (score norm), other
    retraining budgets as pentagons; the unstructured twin of channel pruning as faint down-triangles,
    rounded channel widths as pluses."""
    if "unstructured" in label:
        return "v", 0.55
    if "widths x" in label:
        return "P", 0.8
    if "finetune" in label:
        return "x", 0.45
    if "lr-rewind" in label:
        return "D", 0.7
    for part, look, _ in _OPTION_LOOKS:
        if part in label:  # a collapse guard, or another retraining budget
            return look, 0.85
    return marker, 1.0


# (label part, marker, tab20b colour index or None for the method's colour): the collapse guards, then
# the retraining budgets; colours are given to the CPU CIFAR-10 benchmark's 1 and 6 epochs, any other
# budget keeps its method's colour
_OPTION_LOOKS = (("progressive", "<", 0), ("floor", "^", 4), ("-norm", "*", 9), ("1 ep", "p", 16),
                 ("6 ep", "p", 12), (" ep", "p", None))


def _series_color(colors: dict, method: str, label: str) -> tuple:
    """The method's colour, except for a collapse guard or a shorter/longer retraining budget, which get
    their own hue from tab20b (the palette's tail, which method colours reach only past twenty methods)
    so that they stand apart from the paper's method in the same plot."""
    import matplotlib

    for part, _, i in _OPTION_LOOKS:
        if part in label:
            return colors[method] if i is None else matplotlib.colormaps["tab20b"].colors[i]
    return colors[method]


def _style(regime: str) -> tuple[str, str]:
    return _REGIME_STYLE.get(regime.split(",")[0], ("-.", "D"))


def plot_accuracy(agg: dict, dataset: str, path: Path) -> None:
    """Accuracy vs sparsity: every method on the full range and, when some fall far below the dense
    student, a second panel zoomed on the band near it (where the methods differ by tenths of a point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in agg if k[0] == dataset]
    series = sorted({(k[1], k[2], k[3]) for k in keys})
    colors = _colors(k[2] for k in keys)
    ref = [k for k in keys if k[2] == "teacher-guided"] or keys  # the paper's dense student, when present
    dense = statistics.fmean(agg[k]["dense"] for k in ref)
    means = [agg[k]["mean"] for k in keys]
    zoom_lo = math.floor(max(min(means), dense - 6.0))
    panels = [(None, "all methods")] + ([(zoom_lo, f"zoom: {zoom_lo}% and up")] if min(means) < zoom_lo else [])
    n_series = len(series) + 1
    ncol = 4 if len(panels) > 1 else 2
    legend_rows = math.ceil(n_series / ncol)
    fig = plt.figure(figsize=(6.5 * len(panels), 5.5 + 0.3 * legend_rows))
    axes = [fig.subplots(1, len(panels), squeeze=False)[0]]
    ticks = sorted({k[4] for k in keys})
    kind = _channel_only(agg, dataset)
    what = {"macs": "MACs reduction", "params": "parameters removed"}.get(kind, "sparsity")
    for ax, (lo, title) in zip(axes[0], panels):
        for arch, method, regime in series:
            pts = sorted((k[4], agg[k]) for k in keys if k[1:4] == (arch, method, regime))
            ls, marker = _style(regime)
            marker, alpha = _variant_look(regime, marker)
            ax.errorbar([_density_axis(s) for s, _ in pts], [c["mean"] for _, c in pts],
                        yerr=[c["std"] for _, c in pts], color=_series_color(colors, method, regime),
                        linestyle=ls, marker=marker,
                        markersize=5, capsize=3, linewidth=2.4 if method == "teacher-guided" else 1.5,
                        alpha=alpha, label=f"{method} ({regime})")
        ax.axhline(dense, color="black", linestyle=(0, (4, 3)), linewidth=1,
                   label=f"dense student of {ref[0][2]} ({dense:.1f}%)")
        ax.set_xticks([_density_axis(s) for s in ticks])
        ax.set_xticklabels([level(s, kind) for s in ticks])
        if lo is not None:
            ax.set_ylim(lo, min(100.0, max(means) + 1.0))
        ax.set_xlabel(f"{what} (channel pruning)" if kind else "sparsity (log-density axis)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title, fontsize=12)
        ax.tick_params(labelsize=11)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    bottom = (0.21 * legend_rows + 0.75) / fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=10, frameon=False,
               title="method (regime); line: plain solid, kd dashed, sd dotted", title_fontsize=10)
    many = max(agg[k]["n"] for k in keys) > 1
    fig.suptitle(f"{dataset}: accuracy vs {what}" + (" (mean ± std over seeds)" if many else " (one seed)"),
                 fontsize=14)
    fig.tight_layout(rect=(0, bottom, 1, 1))
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
    if len(methods) < 2:  # a radar compares methods; one alone says nothing the table does not
        return False
    colors = _colors(best)
    angles = [2 * math.pi * i / len(levels) for i in range(len(levels))]
    angles.append(angles[0])
    fig = plt.figure(figsize=(9.5, 7))
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_offset(math.pi / 2)  # the first level at the top, then clockwise
    ax.set_theta_direction(-1)
    lo = math.floor(min(min(v.values()) for v in methods.values()))
    for m, v in sorted(methods.items(), key=lambda kv: (kv[0] != "teacher-guided", kv[0])):
        vals = [v[lv] for lv in levels] + [v[levels[0]]]
        main = m == "teacher-guided"
        ax.plot(angles, vals, marker="o", markersize=4, linewidth=2.6 if main else 1.4, color=colors[m], label=m,
                zorder=3 if main else 2)
        if main:
            ax.fill(angles, vals, color=colors[m], alpha=0.12)
    ax.set_xticks(angles[:-1])
    ax.set_xticklabels([f"{lv:.0%}" for lv in levels], fontsize=11)
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_rlabel_position(180.0 / len(levels))  # between the first two spokes
    ax.tick_params(axis="y", labelsize=8, labelcolor="dimgray")
    fig.suptitle("top-1 (%) at each sparsity, best regime per method", fontsize=13)
    ax.legend(loc="center left", bbox_to_anchor=(1.12, 0.5), fontsize=9)
    _savefig(fig, path)
    plt.close(fig)
    return True


def write_report(paths: list[str | Path], out: str | Path, published: str | Path | None = None,
                 latency_batch: int | None = None, latency_channels_last: bool = True) -> dict:
    """Write the report of the results under ``paths`` into ``out``; ``latency_batch`` adds accuracy
    against latency measured here (:mod:`kdprune.experiments.latency_report`)."""
    out = Path(out)
    pub = load_published(published)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    rows = collect(paths)
    agg = aggregate(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", _csv(rows))
    md = _markdown(agg, pub)
    compute = compute_markdown(agg)
    if compute:
        md = md.rstrip("\n") + "\n\n" + compute
    classes = class_lines(rows)
    if classes:
        md = md.rstrip("\n") + "\n\n" + classes
    written = ["results.csv", "results.md"]
    if latency_batch:
        from kdprune.experiments.latency_report import write_latency

        lat_md, files = write_latency(rows, out, latency_batch, channels_last=latency_channels_last)
        md = md.rstrip("\n") + "\n\n" + lat_md
        written += files
    write_text(out / "results.md", md)
    for dataset in sorted({k[0] for k in agg}):
        name = f"accuracy_vs_sparsity_{dataset}.png"
        plot_accuracy(agg, dataset, out / name)
        written.append(name)
        if plot_compute(agg, dataset, out / f"accuracy_vs_compute_{dataset}.png"):
            written.append(f"accuracy_vs_compute_{dataset}.png")
    if plot_radar(agg, out / "radar.png"):
        written.append("radar.png")
    return {"rows": len(rows), "files": written, "markdown": md}
