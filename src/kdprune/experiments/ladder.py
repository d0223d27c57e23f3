"""``kdprune report RUNS... --ladder --out DIR``: where the teacher helps, set against how far it leads.

The runs of a teacher-strength ladder train several teachers of different accuracy and, under each, the
same students: the dense students (``--method dense``: CE and KD), and teacher-guided and magnitude pruning
with plain and KD retraining. Rows are grouped by teacher (dataset, student, teacher architecture and the
teacher's top-1: each teacher is trained once) and, within a teacher, paired by seed. Rows that mix
retraining schedules or retraining lengths (a benchmark's, not a ladder's) are compared within each
``setting``, e.g. ``restart, 3 ep``. Three differences measure the teacher's signal where it enters:

* ``kd-ce student``: the dense KD student − the dense CE student (the student's own training);
* ``tg-magnitude``: teacher-guided − magnitude pruning at one sparsity, one retraining regime (the criterion);
* ``kd-plain``: KD − plain retraining of one method at one sparsity (the retraining).

Each is set against the teacher's **gap**: the teacher's top-1 − the dense CE student's (mean over seeds;
the CE student depends on no teacher). Written: ``results.csv`` (every row), ``ladder.csv`` (one row per
difference), ``ladder.md`` (one table per dataset, a column per teacher from the weakest) and
``teacher_ladder.png`` (each difference against the gap, one row of panels per dataset).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kdprune.choices import RETRAIN_SCHEDULES
from kdprune.errors import UserError
from kdprune.experiments.plotstyle import savefig
from kdprune.experiments.report import _csv, _legend_below, collect, mean_std
from kdprune.io import write_text
from kdprune.methods.registry import PAPER_METHOD

KINDS = ("kd-ce student", "tg-magnitude", "kd-plain")
KIND_TITLES = {"kd-ce student": "dense KD student − dense CE student",
               "tg-magnitude": f"{PAPER_METHOD} − magnitude pruning",
               "kd-plain": "KD − plain retraining"}


@dataclass(frozen=True, order=True)
class Teacher:
    """One trained teacher: rows under it share the dataset, student, teacher architecture and its top-1."""

    dataset: str
    arch: str
    teacher_arch: str
    teacher_top1: float


@dataclass(frozen=True)
class Difference:
    """One of the teacher's effects under one teacher, in points, over the seeds both sides share."""

    dataset: str
    arch: str
    teacher_arch: str
    teacher_top1: float
    gap: float | None          # teacher top-1 − dense CE student top-1 (None without a dense CE row)
    kind: str                  # one of KINDS
    method: str                # the pruning method (kd-plain), teacher-guided (tg-magnitude), dense
    sparsity: float
    regime: str                # the retraining regime compared (tg-magnitude); "" otherwise
    variant: str               # e.g. "alpha 0.5"; "" for the paper's settings
    mean: float
    std: float
    n: int
    setting: str = ""          # retraining schedule and epochs where the rows mix them ("restart, 3 ep")

    @property
    def teacher(self) -> Teacher:
        return Teacher(self.dataset, self.arch, self.teacher_arch, self.teacher_top1)

    @property
    def label(self) -> str:
        """Its setting and variant, as a column's or a hollow marker's name ("" at a ladder's settings)."""
        return ", ".join(p for p in (self.setting, self.variant) if p)


def _parts(r: dict) -> list[str]:
    return [p.strip() for p in (r.get("variant") or "").split(",") if p.strip()]


def _variant(r: dict) -> str:
    """The row's variant without its retraining schedule (see :func:`_setting`)."""
    return ", ".join(p for p in _parts(r) if p not in RETRAIN_SCHEDULES)


def _setting(rows: list[dict]):
    """``row -> setting``: the retraining schedule and epochs of a pruning row, named only where the pruning
    rows differ in them. Every ladder row shares both (the setting is then ""); a benchmark's rows mix them
    (fine-tuning against restart, 1 against 3 epochs), and a difference compares two rows of one setting."""
    pruned = [r for r in rows if r["method"] in (PAPER_METHOD, "magnitude")]
    schedules = {tuple(p for p in _parts(r) if p in RETRAIN_SCHEDULES) for r in pruned}
    epochs = {str(r.get("epochs")) for r in pruned}

    def setting(r: dict) -> str:
        if r["method"] == "dense":
            return ""
        parts = [p for p in _parts(r) if p in RETRAIN_SCHEDULES] if len(schedules) > 1 else []
        return ", ".join(parts + ([f"{r.get('epochs')} ep"] if len(epochs) > 1 else []))
    return setting


def _put(seeds: dict[int, float], r: dict, where) -> None:
    """Add a row's top-1 under its seed; the same result met twice (a dense CE student every teacher's dense
    run records) is one, two different results for one cell are a mixed input."""
    seed, top1 = int(r["seed"]), float(r["top1"])
    if seed in seeds and seeds[seed] != top1:
        raise UserError(f"two different results for {r['method']} ({r['regime']}) at {r['target_sparsity']}, "
                        f"seed {seed}, under {where}: {seeds[seed]} and {top1} (runs of two ladders, or settings "
                        "that differ beyond the teacher and alpha?); pass the runs of one ladder")
    seeds[seed] = top1


def ce_students(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """(dataset, arch) -> {seed: top-1} of the dense CE students (``--method dense``, regime plain)."""
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["method"] == "dense" and r["regime"] == "plain":
            _put(out[(r["dataset"], r["arch"])], r, f"{r['dataset']} (the dense CE student)")
    return dict(out)


def _by_teacher(rows: list[dict]) -> dict[Teacher, list[dict]]:
    groups: dict[Teacher, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("teacher_top1") is not None and r.get("teacher_arch"):
            groups[Teacher(r["dataset"], r["arch"], r["teacher_arch"], round(float(r["teacher_top1"]), 2))].append(r)
    return groups


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(a.keys() & b.keys())]


def differences(rows: list[dict]) -> list[Difference]:
    """Every difference the rows allow, grouped by teacher (the order: dataset, teacher by top-1, kind)."""
    ce = ce_students(rows)
    setting_of = _setting(rows)
    out = []
    for t, rs in sorted(_by_teacher(rows).items()):
        ce_seeds = ce.get((t.dataset, t.arch), {})
        gap = t.teacher_top1 - statistics.fmean(ce_seeds.values()) if ce_seeds else None
        # top-1 by seed of each (method, sparsity, regime, variant, setting) under this teacher
        cell: dict[tuple, dict[int, float]] = defaultdict(dict)
        for r in rs:
            _put(cell[(r["method"], float(r["target_sparsity"]), r["regime"], _variant(r), setting_of(r))], r,
                 f"the {t.teacher_arch} teacher ({t.teacher_top1:.2f}%) on {t.dataset}")

        def add(kind, method, s, regime, variant, setting, diffs):
            if diffs:
                m, sd = mean_std(diffs)
                out.append(Difference(t.dataset, t.arch, t.teacher_arch, t.teacher_top1, gap, kind, method, s,
                                      regime, variant, m, sd, len(diffs), setting))

        for (method, s, regime, variant, setting), seeds in sorted(cell.items()):
            if method == "dense" and regime == "kd":
                add("kd-ce student", "dense", 0.0, "", variant, setting, _paired(seeds, ce_seeds))
            if method == PAPER_METHOD and ("magnitude", s, regime, variant, setting) in cell:
                add("tg-magnitude", PAPER_METHOD, s, regime, variant, setting,
                    _paired(seeds, cell[("magnitude", s, regime, variant, setting)]))
            if method != "dense" and regime == "kd" and (method, s, "plain", variant, setting) in cell:
                add("kd-plain", method, s, "", variant, setting,
                    _paired(seeds, cell[(method, s, "plain", variant, setting)]))
    order = {k: i for i, k in enumerate(KINDS)}
    regime = {"plain": 0, "kd": 1}
    return sorted(out, key=lambda d: (d.dataset, d.arch, order[d.kind], d.method != PAPER_METHOD, d.method,
                                      regime.get(d.regime, 0), d.sparsity, d.teacher_top1, d.setting, d.variant))


def _teacher_label(t: Teacher, gap: float | None, variant: str) -> str:
    g = "–" if gap is None else f"{gap:+.1f}"
    return f"{t.teacher_arch} {t.teacher_top1:.2f}% (gap {g})" + (f", {variant}" if variant else "")


def _row_label(d: Difference) -> str:
    if d.kind == "kd-ce student":
        return "dense KD − CE student"
    if d.kind == "tg-magnitude":
        return f"{PAPER_METHOD} − magnitude, {d.regime}, {d.sparsity * 100:g}%"
    return f"kd − plain retraining, {d.method}, {d.sparsity * 100:g}%"


def ladder_markdown(diffs: list[Difference], ce: dict[tuple, dict[int, float]] | None = None) -> str:
    """One table per dataset and student: a row per difference, a column per teacher (weakest first); ``ce``
    (:func:`ce_students`) names the dense CE student the gaps are measured from."""
    parts = []
    for ds, arch in sorted({(d.dataset, d.arch) for d in diffs}):
        ds_diffs = [d for d in diffs if (d.dataset, d.arch) == (ds, arch)]
        cols = sorted({(d.teacher, d.label) for d in ds_diffs}, key=lambda c: (c[0].teacher_top1, c[1]))
        gaps = {d.teacher: d.gap for d in ds_diffs}
        rows: dict[str, dict] = {}
        for d in ds_diffs:
            rows.setdefault(_row_label(d), {})[(d.teacher, d.label)] = d
        head = [_teacher_label(t, gaps[t], v) for t, v in cols]
        seeds = (ce or {}).get((ds, arch), {})
        ref = (f"Dense CE student (the gap's reference): {statistics.fmean(seeds.values()):.2f}% "
               f"(mean over seed{'s' * (len(seeds) > 1)} {', '.join(map(str, sorted(seeds)))}).") if seeds else \
            "No dense CE student (run --method dense --retrain both): no gaps."
        lines = [f"## {ds}, {arch} student: the teacher's effect by teacher, in points (mean ± std over seeds, "
                 "paired by seed; n=k where fewer than 2 pairs)", "", ref, "",
                 "| difference | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
        for label, cells in rows.items():
            vals = []
            for c in cols:
                d = cells.get(c)
                vals.append("–" if d is None else f"{d.mean:+.2f} (n={d.n})" if d.n < 2 else f"{d.mean:+.2f} ± {d.std:.2f}")
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        parts.append("\n".join(lines))
    tally = _tally(diffs)
    return "\n\n".join(parts) + ("\n\n" + tally if tally else "") + "\n"


def _tally(diffs: list[Difference]) -> str:
    """How many cells of each kind are above zero, at the paper's settings, by teacher (and setting)."""
    lines = []
    for kind in KINDS:
        ds = [d for d in diffs if d.kind == kind and not d.variant]
        if not ds:
            continue
        by_t: dict[tuple[Teacher, str], list[Difference]] = defaultdict(list)
        for d in ds:
            by_t[(d.teacher, d.setting)].append(d)
        cells = "; ".join(f"{t.dataset} {t.teacher_arch} {t.teacher_top1:.2f}%{f' ({s})' if s else ''}: "
                          f"{sum(d.mean > 0 for d in v)} of {len(v)}" for (t, s), v in sorted(by_t.items()))
        lines.append(f"- {KIND_TITLES[kind]} above zero: {cells}")
    return "Cells above zero (the paper's settings):\n\n" + "\n".join(lines) if lines else ""


def plot_ladder(diffs: list[Difference], path: Path) -> bool:
    """Each difference against the teacher's gap: a row of three panels per dataset; colour = sparsity, line =
    regime (tg-magnitude) or method (kd-plain, magnitude dashed); a variant (e.g. alpha 0.5) or a setting as
    hollow markers in the same colours, not joined, with one legend entry (at most 7 entries, under the panel)."""
    pts = [d for d in diffs if d.gap is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({(d.dataset, d.arch) for d in pts})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 5.6 * len(datasets)), squeeze=False)
    levels = sorted({d.sparsity for d in pts if d.kind != "kd-ce student"})
    cmap = matplotlib.colormaps["viridis"]
    colour = {s: cmap(i / max(1, len(levels) - 1) * 0.85) for i, s in enumerate(levels)}
    for row, (ds, arch) in enumerate(datasets):
        for col, kind in enumerate(KINDS):
            ax = axes[row][col]
            series: dict[tuple, list[Difference]] = defaultdict(list)
            for d in pts:
                if (d.dataset, d.arch, d.kind) == (ds, arch, kind):
                    series[(d.sparsity, d.regime or d.method, d.label)].append(d)
            variants_named = set()
            for (s, line, variant), ds_ in sorted(series.items()):
                ds_.sort(key=lambda d: d.gap)
                dashed = line in ("kd", "magnitude")
                c = "black" if kind == "kd-ce student" else colour[s]
                label = "dense students" if kind == "kd-ce student" else f"{s * 100:g}%, {line}"
                if variant:  # hollow markers in the same colours, one legend entry per variant
                    label = None if variant in variants_named else f"hollow: {variant}"
                    variants_named.add(variant)
                ax.errorbar([d.gap for d in ds_], [d.mean for d in ds_], yerr=[d.std for d in ds_], color=c,
                            linestyle="none" if variant else ("--" if dashed else "-"),
                            marker="s" if dashed else "o", mfc="none" if variant else c, capsize=3,
                            label=None if variant else label)
                if label and variant:  # a grey proxy: the variant's legend entry names no level
                    ax.plot([], [], linestyle="none", marker="o", mfc="none", color="grey", label=label)
            ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(f"{ds}: {KIND_TITLES[kind]}", fontsize=10)
            ax.set_xlabel("teacher top-1 − dense CE student top-1 (points)")
            ax.set_ylabel("difference (points)")
            ax.grid(alpha=0.3)
    _legend_below(fig, axes.flatten())  # under each panel: a legend inside covers the points at its edge
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)
    return True


def _diff_csv(diffs: list[Difference]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, [f.name for f in fields(Difference)], lineterminator="\n")
    w.writeheader()
    for d in diffs:
        w.writerow(asdict(d))
    return buf.getvalue()


def write_ladder(paths: list[str | Path], out: str | Path) -> dict:
    """Write the ladder report of the results under ``paths`` into ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    rows = collect(paths)
    diffs = differences(rows)
    if not diffs:
        raise UserError("no teacher-ladder differences in these results: a ladder needs, under each teacher, "
                        "dense runs (--method dense --retrain both) or teacher-guided and magnitude runs")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", _csv(rows))
    write_text(out / "ladder.csv", _diff_csv(diffs))
    md = ladder_markdown(diffs, ce_students(rows))
    write_text(out / "ladder.md", md)
    files = ["results.csv", "ladder.csv", "ladder.md"]
    if plot_ladder(diffs, out / "teacher_ladder.png"):
        files.append("teacher_ladder.png")
    return {"rows": len(rows), "files": files, "markdown": md}
