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
from kdprune.io import find_up, read_json, read_jsonl, write_text
from kdprune.experiments.plotstyle import (
    LEVEL_NAMES,
    density_axis,
    level,
    method_colors,
    savefig,
    series_color,
    series_labels,
    style,
    variant_look,
)
from kdprune.methods.result import ResultRow, channel_kind, combine_kinds

CSV_COLUMNS = ResultRow.columns()  # the one result schema (kdprune.methods.result), as the store's columns
RADAR_LEVELS = (0.5, 0.75, 0.9, 0.94, 0.98)


def collect(paths: list[str | Path]) -> list[dict]:
    """Every result row under ``paths``: run folders (searched recursively for results.jsonl), results.jsonl
    files, or a report's results.csv."""
    rows, seen = [], set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"no such run folder or file: {p}")
        files = [p] if p.is_file() else sorted(p.rglob("results.jsonl"))
        for f in files:
            try:
                for r in (_read_csv(f) if f.suffix == ".csv" else read_jsonl(f)):
                    key = (r.get("out"), r["method"], r["regime"], r["seed"], r["target_sparsity"], r["dataset"])
                    if key not in seen:
                        seen.add(key)
                        rows.append(r)
            except (ValueError, KeyError) as e:
                raise UserError(f"{f} is not a kdprune results file ({e})") from None
    if not rows:
        raise UserError(f"no results found under {', '.join(map(str, paths))}")
    _fill_teacher_images(rows)
    return rows


def _fill_teacher_images(rows: list[dict]) -> None:
    """Give every row its ``teacher_images_fwd_bwd`` (rows of versions before the field: from the run's
    ``teacher/metrics.json``, else from a row trained under the same teacher, i.e. the same dataset, teacher
    architecture and teacher top-1), so that the report's results.csv carries it whole."""
    known = {}
    for r in rows:
        if r.get("teacher_images_fwd_bwd") is None:
            n = teacher_images(r)
            r["teacher_images_fwd_bwd"] = n if n else None
        if r.get("teacher_images_fwd_bwd"):
            known[(r["dataset"], r.get("teacher_arch"), r.get("teacher_top1"))] = r["teacher_images_fwd_bwd"]
    for r in rows:
        if r.get("teacher_images_fwd_bwd") is None:
            counts = r.get("teacher_top1") is not None
            r["teacher_images_fwd_bwd"] = known.get((r["dataset"], r.get("teacher_arch"), r.get("teacher_top1")), 0) \
                if counts else 0


def _read_csv(path: Path) -> list[dict]:
    """The rows of a report's ``results.csv`` (a committed report can be redrawn without its run folders)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"method", "regime", "target_sparsity", "top1"} <= set(reader.fieldnames or ()):
            raise ValueError("not a kdprune results.csv: its header lacks method, regime, target_sparsity or top1")
        return [ResultRow.from_dict(r).to_dict() for r in reader]


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
    from kdprune.methods import METHODS

    method = METHODS.get(row["method"])
    if not (method and method.recipe.pays_for_teacher) and row["regime"] != "kd":
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
    if None in kinds or not kinds:
        return ""
    return combine_kinds(kinds) or ""


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict]) -> dict[tuple, dict]:
    """(dataset, arch, method, regime label, sparsity) -> mean/std of top1 over seeds, and mean cost.

    Runs of one method and regime with different schedules are kept apart (the label gets "N ep")."""
    labels = series_labels(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["arch"], r["method"], labels[id(r)], float(r["target_sparsity"]))].append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        m, s = mean_std([r["top1"] for r in rs])
        out[key] = {"n": len(rs), "mean": m, "std": s, "seeds": sorted(r["seed"] for r in rs),
                    "regime": rs[0]["regime"], "variant": rs[0].get("variant") or "", "budget": rs[0].get("epochs"),
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
        ref_series = next((sr for sr in series if sr[0] == _paper()), series[0])
        ref = {s: agg[(dataset, arch, *ref_series, s)]["images_fwd_bwd"] for s in ours
               if (dataset, arch, *ref_series, s) in agg}
        ch = _channel_only(agg, dataset, arch)
        lines += ["", f"### {dataset}, {arch}: compute (means over seeds)", "",
                  f"Epochs, images through forward+backward, teacher forwards and wall seconds to reach the "
                  f"highest level ({level(ours[-1], ch)}, or the lower one a row names where the method stops "
                  f"there; one-shot methods pay the same at every level, iterative ones pay per round); then "
                  f"images relative to {ref_series[0]} ({ref_series[1]}) at each "
                  f"level ({', '.join(level(s, ch) for s in ours)}).", "",
                  "| method (regime) | epochs | images fwd+bwd | teacher forwards | wall s | "
                  f"images / {ref_series[0]} ({ref_series[1]}) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for sr in series:
            have = [s for s in ours if (dataset, arch, *sr, s) in agg]
            top = agg[(dataset, arch, *sr, have[-1])]
            ratios = " · ".join(f"{agg[(dataset, arch, *sr, s)]['images_fwd_bwd'] / ref[s]:.2f}" if ref.get(s) else "–"
                                for s in have)
            stops = f", to {level(have[-1], ch)}" if have[-1] != ours[-1] else ""
            lines.append(f"| {sr[0]} ({sr[1]}){stops} | {top['total_epochs']:.0f} | {top['images_fwd_bwd']:,.0f} | "
                         f"{top['teacher_forwards']:,.0f} | {top['total_wall_seconds']:.1f} | {ratios} |")
        lines.append("")
    return "\n".join(lines)


COMPUTE_LEVELS = (0.9, 0.98)


def _compute_points(agg: dict, dataset: str, arch: str, s: float) -> list[tuple]:
    """(method, label, top-1 mean, std or None for one seed, images with the teacher, images without it) at
    sparsity ``s``."""
    pts = []
    for (d, a, method, label, sp), c in agg.items():
        if (d, a) == (dataset, arch) and abs(sp - s) < 1e-9:
            pts.append((method, label, c["mean"], c["std"] if c["n"] > 1 else None, c["images_fwd_bwd"],
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
                spread = "" if std is None else f" ± {std:.2f}"  # one seed has no spread to show
                lines.append(f"| {method} ({label}) | {mean:.2f}{spread} | {imgs:,.0f} | {no_t:,.0f} |")
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

    paper = _paper()
    ok = [p for p in pts if p[0] == paper and p[2] >= ref[2] - margin]
    if not ok:
        best = max((p for p in pts if p[0] == paper), key=lambda p: p[2], default=None)
        gap = (f"; its best ({best[1]}, {best[2]:.2f}%) is {ref[2] - best[2]:.2f} points below, at {cost(best)}"
               if best else "")
        return f"No teacher-guided budget comes within {margin} points of IMP ({ref[2]:.2f}%){gap}."
    cheap = min(ok, key=lambda p: (p[4], -p[2]))  # the cheapest; among equally cheap, the most accurate
    return (f"Cheapest teacher-guided setting within {margin} points of IMP ({ref[2]:.2f}%): **{cheap[1]}** at "
            f"{cheap[2]:.2f}%, {cost(cheap)}.")


MAX_SERIES = 8  # lines (or points) in one panel, the dense reference not counted

# Figure panels by recipe family: the paper's method is compared with each family in its own panel. A channel
# pruning run's method names its criterion (magnitude, teacher-guided, ...): it falls in "post-training".
_FAMILIES = (("post-training", "the same recipe, other criteria"),
             ("at-init", "pruning at initialisation and iterative pruning"),
             ("epsd", "early pruning with self-distillation"))


def _family(method: str) -> str:
    from kdprune.methods import METHODS

    m = METHODS.get(method)
    if m is None:
        return "other"
    family = "at-init" if m.recipe.iterative else m.recipe.name
    return family if family in dict(_FAMILIES) else "other"  # e.g. the dense references


def _main_setting(rows: list[dict]) -> tuple[str, object]:
    """A method's main (variant, budget): the variant run most (ties: ``restart``, the default, then by
    name), then its most-run retraining budget. Every other setting of the method is an ablation."""
    from collections import Counter

    variants = Counter(r["variant"] for r in rows)
    variant = min(variants, key=lambda v: (-variants[v], v != "restart", v))
    budgets = Counter(r["budget"] for r in rows if r["variant"] == variant)
    return variant, min(budgets, key=lambda b: (-budgets[b], str(b)))


def _series_sets(agg: dict, dataset: str) -> tuple[list, dict, dict]:
    """``(series, main, best)`` for ``dataset``: every series ``(arch, method, label)``; per (arch, method) the
    labels of its main setting (one per regime); per (arch, method) the main label of its best regime
    (highest mean over its levels)."""
    keys = [k for k in agg if k[0] == dataset]
    series = sorted({k[1:4] for k in keys})
    info = {k[1:4]: agg[k] for k in keys}
    main, best = defaultdict(list), {}
    for arch, method in sorted({(a, m) for a, m, _ in series}):
        own = [sr for sr in series if sr[:2] == (arch, method)]
        variant, budget = _main_setting([info[sr] for sr in own])
        main[(arch, method)] = [sr for sr in own if (info[sr]["variant"], info[sr]["budget"]) == (variant, budget)]

        def level_mean(sr):
            return statistics.fmean(agg[k]["mean"] for k in keys if k[1:4] == sr)

        best[(arch, method)] = max(main[(arch, method)], key=level_mean)
    return series, dict(main), best


def comparison_panels(agg: dict, dataset: str) -> list[tuple[str, list]]:
    """The main figure's panels: per recipe family present, the paper's method (its main setting; in its
    own family both regimes, elsewhere its best) against the family's methods (their main setting; in the
    paper's family both regimes, elsewhere each method's best regime). At most ``MAX_SERIES`` per panel:
    a larger family is split."""
    from kdprune.methods import PAPER_METHOD

    series, main, best = _series_sets(agg, dataset)
    panels = []
    for fam, title in (*_FAMILIES, ("other", "other methods")):
        methods = sorted({(a, m) for a, m, _ in series if _family(m) == fam and m != PAPER_METHOD})
        if not methods:
            continue
        papers = [am for am in main if am[1] == PAPER_METHOD]
        own = fam == "post-training"
        ref = [sr for am in papers for sr in (main[am] if own else [best[am]])]
        chosen = [sr for am in methods for sr in (main[am] if own else [best[am]])]
        room = max(1, MAX_SERIES - len(ref))
        parts = [chosen[i:i + room] for i in range(0, len(chosen), room)]
        for n, part in enumerate(parts, 1):
            panels.append((title + (f" ({n}/{len(parts)})" if len(parts) > 1 else ""), ref + part))
    if not panels and main:  # the paper's method alone (or one method): its main setting
        panels.append(("", [sr for srs in main.values() for sr in srs][:MAX_SERIES]))
    return panels


def ablation_panels(agg: dict, dataset: str) -> list[tuple[str, list]]:
    """The ablation figure's panels: for each method run in more than the main figure shows of it, its other
    retraining regimes, schedules and budgets, and (apart) its collapse guards, each beside what the main
    figure shows of the method for reference."""
    series, main, best = _series_sets(agg, dataset)
    panels = []
    for am, setting in sorted(main.items(), key=lambda kv: (kv[0][1] != _paper(), kv[0])):
        ref = setting if am[1] == _paper() or _family(am[1]) == "post-training" else [best[am]]
        others = [sr for sr in series if sr[:2] == am and sr not in ref]
        guards = [sr for sr in others if any(g in agg_info(agg, dataset, sr)["variant"] for g in _GUARDS)]
        schedules = [sr for sr in others if sr not in guards]
        for what, group in (("retraining (regime, schedule, budget)", schedules), ("collapse guards", guards)):
            room = max(1, MAX_SERIES - len(ref))
            for n in range(0, len(group), room):
                part = group[n:n + room]
                more = f" ({n // room + 1}/{-(-len(group) // room)})" if len(group) > room else ""
                panels.append((f"{am[1]}: {what}{more}", ref + part))
    return panels


_GUARDS = ("progressive", "floor", "-norm", " scope")  # the options against layer collapse (variant names)


def _paper() -> str:
    from kdprune.methods import PAPER_METHOD

    return PAPER_METHOD


def agg_info(agg: dict, dataset: str, sr: tuple) -> dict:
    """Any aggregate entry of series ``sr`` (arch, method, label): its regime, variant and budget."""
    return next(v for k, v in agg.items() if k[0] == dataset and k[1:4] == sr)


def _legend_below(fig, axes, ncol: int = 2) -> None:
    """Each panel's own legend under it (no two panels share labels, so none is repeated or overlaps)."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=8.5,
                      frameon=False)


def plot_compute(agg: dict, dataset: str, path: Path) -> bool:
    """Top-1 against images (log axis) at 90% and 98%, one row per level and one column per panel of the
    main figure; teacher's training counted (filled) and not (hollow, joined by a thin line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({k[1] for k in agg if k[0] == dataset})
    levels = [s for s in COMPUTE_LEVELS if any(_compute_points(agg, dataset, a, s) for a in archs)]
    if not levels:
        return False
    panels = _compute_panels(agg, dataset)
    colors = method_colors(k[2] for k in agg if k[0] == dataset)
    fig, axes = plt.subplots(len(levels), len(panels), figsize=(6.2 * len(panels), 6.4 * len(levels)), squeeze=False)
    for row, s in zip(axes, levels):
        for ax, (title, members) in zip(row, panels):
            pts = [p for a in archs for p in _compute_points(agg, dataset, a, s) if (a, p[0], p[1]) in members]
            for method, label, mean, std, imgs, no_t in pts:
                ls, marker = style(label)
                marker, _ = variant_look(label, marker)
                color = series_color(colors, method, label)
                ax.errorbar([imgs], [mean], yerr=None if std is None else [std], color=color, marker=marker, markersize=7,
                            capsize=3, linestyle="none", label=f"{method} ({label})")
                if no_t < imgs:
                    ax.plot([no_t, imgs], [mean, mean], color=color, linewidth=0.8, alpha=0.6)
                    ax.plot([no_t], [mean], marker=marker, markersize=7, markerfacecolor="white",
                            color=color, linestyle="none")
            ax.set_xscale("log")
            ax.set_xlabel("images through forward+backward (hollow: teacher's training not counted)", fontsize=9)
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(f"{s:.0%} sparsity: {title}" if title else f"{s:.0%} sparsity", fontsize=10.5)
            ax.grid(alpha=0.3, which="both")
    _legend_below(fig, axes.flatten())
    fig.suptitle(f"{dataset}: accuracy against training compute", fontsize=13)
    fig.tight_layout(h_pad=9.0, rect=(0, 0, 1, 0.97))
    savefig(fig, path)
    plt.close(fig)
    return True


def _compute_panels(agg: dict, dataset: str) -> list[tuple[str, set]]:
    """The main figure's panels, with the paper's method's other retraining budgets beside its main
    setting (what it costs to train longer is the point of this plot)."""
    series, main, _ = _series_sets(agg, dataset)
    paper = _paper()
    budgets = [sr for sr in series if sr[1] == paper and sr not in main.get((sr[0], paper), [])
               and not any(g in agg_info(agg, dataset, sr)["variant"] for g in _GUARDS)
               and agg_info(agg, dataset, sr)["variant"] == agg_info(agg, dataset, main[(sr[0], paper)][0])["variant"]]
    panels = comparison_panels(agg, dataset)
    return [(title, set(members) | (set(budgets) if i == 0 else set())) for i, (title, members) in enumerate(panels)]


def _plot_panels(agg: dict, dataset: str, path: Path, panels: list[tuple[str, list]], title: str) -> None:
    """Accuracy against sparsity (log-density axis), one panel per (title, series), the dense student as a
    dashed line, a legend under each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in agg if k[0] == dataset]
    colors = method_colors(k[2] for k in keys)
    paper = _paper()
    ref = [k for k in keys if k[2] == paper] or keys  # the paper's dense student, when present
    dense = statistics.fmean(agg[k]["dense"] for k in ref)
    ticks = sorted({k[4] for k in keys})
    kind = _channel_only(agg, dataset)
    what = LEVEL_NAMES.get(kind, "sparsity")
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 6.6 * nrows), squeeze=False)
    for ax, (sub, members) in zip(axes.flatten(), panels):
        for arch, method, label in members:
            pts = sorted((k[4], agg[k]) for k in keys if k[1:4] == (arch, method, label))
            ls, marker = style(label)
            marker, alpha = variant_look(label, marker)
            ax.errorbar([density_axis(s) for s, _ in pts], [c["mean"] for _, c in pts],
                        yerr=[c["std"] for _, c in pts], color=series_color(colors, method, label),
                        linestyle=ls, marker=marker, markersize=5, capsize=3,
                        linewidth=2.4 if method == paper else 1.5, alpha=alpha, label=f"{method} ({label})")
        ax.axhline(dense, color="black", linestyle=(0, (4, 3)), linewidth=1,
                   label=f"dense student of {ref[0][2]} ({dense:.1f}%)")
        ax.set_xticks([density_axis(s) for s in ticks])
        ax.set_xticklabels([level(s, kind) for s in ticks], fontsize=9)
        ax.set_xlabel(f"{what} (channel pruning)" if kind else "sparsity (log-density axis)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(sub, fontsize=10.5)
        ax.grid(alpha=0.3)
    for ax in axes.flatten()[len(panels):]:
        ax.set_visible(False)
    _legend_below(fig, axes.flatten()[:len(panels)])
    many = max(agg[k]["n"] for k in keys) > 1
    fig.suptitle(f"{dataset}: {title}" + (" (mean ± std over seeds)" if many else " (one seed)")
                 + "; line: plain solid, kd dashed, sd dotted", fontsize=12.5)
    fig.tight_layout(h_pad=9.0, rect=(0, 0, 1, 0.97))
    savefig(fig, path)
    plt.close(fig)


def plot_accuracy(agg: dict, dataset: str, path: Path) -> None:
    """The main figure: accuracy against sparsity, the paper's method against each family of methods."""
    kind = _channel_only(agg, dataset)
    what = LEVEL_NAMES.get(kind, "sparsity")
    _plot_panels(agg, dataset, path, comparison_panels(agg, dataset), f"accuracy vs {what}")


def plot_ablations(agg: dict, dataset: str, path: Path) -> bool:
    """The ablation figure: each method's other retraining schedules, budgets and collapse guards."""
    panels = ablation_panels(agg, dataset)
    if panels:
        _plot_panels(agg, dataset, path, panels, "ablations of retraining and collapse guards")
    return bool(panels)


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
    colors = method_colors(best)
    angles = [2 * math.pi * i / len(levels) for i in range(len(levels))]
    angles.append(angles[0])
    fig = plt.figure(figsize=(9.5, 7))
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_offset(math.pi / 2)  # the first level at the top, then clockwise
    ax.set_theta_direction(-1)
    lo = math.floor(min(min(v.values()) for v in methods.values()))
    for m, v in sorted(methods.items(), key=lambda kv: (kv[0] != _paper(), kv[0])):
        vals = [v[lv] for lv in levels] + [v[levels[0]]]
        main = m == _paper()
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
    savefig(fig, path)
    plt.close(fig)
    return True


def hardware_markdown(rows: list[dict]) -> str:
    """How many results ran on which machines (a row's ``hardware``); empty when no row recorded it."""
    from collections import Counter

    counts = Counter(r.get("hardware") or "" for r in rows)
    if not any(counts):
        return ""
    lines = ["## Where the results ran", "",
             "The machines of the training stages each result counts (its `hardware`: processor and thread "
             "count, or GPU); float results differ between them. \"not recorded\": runs of kdprune versions "
             "before the field.", "",
             "| hardware | results |", "|---|---:|"]
    for hw, n in sorted(counts.items(), key=lambda kv: (not kv[0], -kv[1], kv[0])):
        lines.append(f"| {hw or 'not recorded'} | {n} |")
    return "\n".join(lines) + "\n"


def write_report(paths: list[str | Path], out: str | Path, published: str | Path | None = None,
                 latency_batch: int | None = None, latency_channels_last: bool = True,
                 latency_runtime: str = "torch") -> dict:
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
    for section in (class_lines(rows), hardware_markdown(rows)):
        if section:
            md = md.rstrip("\n") + "\n\n" + section
    written = ["results.csv", "results.md"]
    from kdprune.experiments.latency_report import write_latency, write_recorded_latency

    rec_md, files = write_recorded_latency(rows, out)  # what each channel run measured when it pruned
    if rec_md:
        md = md.rstrip("\n") + "\n\n" + rec_md
        written += files
    if latency_batch:
        lat_md, files = write_latency(rows, out, latency_batch, channels_last=latency_channels_last,
                                      runtime=latency_runtime)
        md = md.rstrip("\n") + "\n\n" + lat_md
        written += files
    write_text(out / "results.md", md)
    for dataset in sorted({k[0] for k in agg}):
        name = f"accuracy_vs_sparsity_{dataset}.png"
        plot_accuracy(agg, dataset, out / name)
        written.append(name)
        if plot_ablations(agg, dataset, out / f"ablations_{dataset}.png"):
            written.append(f"ablations_{dataset}.png")
        if plot_compute(agg, dataset, out / f"accuracy_vs_compute_{dataset}.png"):
            written.append(f"accuracy_vs_compute_{dataset}.png")
    if plot_radar(agg, out / "radar.png"):
        written.append("radar.png")
    return {"rows": len(rows), "files": written, "markdown": md}
