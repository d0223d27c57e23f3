"""How report figures look: one colour per method, line and marker styles per regime and variant, axis and
level labels, and PNG writing. Shared by :mod:`kdprune.experiments.report` and
:mod:`kdprune.experiments.latency_report` (neither imports the other's internals)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from kdprune.io import atomic_path
from kdprune.methods.registry import PAPER_METHOD


LEVEL_NAMES = {"macs": "MACs reduction", "params": "parameters removed", "latency": "latency target (speed-up asked)",
               "factor": "MACs or latency target"}  # the x axis of channel-pruning results, by target kind


def level(s: float, channel: bool | str) -> str:
    """A column or tick label: ``90%`` of the weights, ``2x MACs`` (fewer MACs, channel pruning) or
    ``50% params`` (of the parameters removed, channel pruning to ``--target-params``)."""
    if channel == "params":
        return f"{s:.0%} params"
    if channel in ("latency", "factor"):
        return f"{1 / (1 - s):.3g}x" + (" latency" if channel == "latency" else "")
    return f"{1 / (1 - s):.3g}x MACs" if channel else f"{s:.0%}"


def series_labels(rows: list[dict]) -> dict[int, str]:
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


def savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")


def density_axis(x: float) -> float:
    return -math.log10(max(1.0 - x, 1e-6))


REGIME_STYLE = {"plain": ("-", "o"), "kd": ("--", "s"), "sd": (":", "^")}


def method_colors(methods) -> dict[str, tuple]:
    """One colour per method, the same in every plot: tab20's ten dark shades, then its ten light ones
    (teacher-guided always gets the first)."""
    import matplotlib

    tab20 = list(matplotlib.colormaps["tab20"].colors)
    palette = tab20[0::2] + tab20[1::2] + list(matplotlib.colormaps["tab20b"].colors)
    ordered = sorted(set(methods), key=lambda m: (m != PAPER_METHOD, m))  # the paper's method: the first
    return {m: palette[i % len(palette)] for i, m in enumerate(ordered)}


def variant_look(label: str, marker: str) -> tuple[str, float]:
    """Retraining schedules of one method apart: finetune faint crosses, lr-rewind diamonds, restart as is;
    collapse guards as left triangles (progressive), up triangles (floor), stars (score norm), hexagons
    (erk scope), crosses (magnitude-budget scope) and right triangles (layerwise scope), other
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
    for part, look, _ in OPTION_LOOKS:
        if part in label:  # a collapse guard, or another retraining budget
            return look, 0.85
    return marker, 1.0


# (label part, marker, tab20b colour index or None for the method's colour): the collapse guards, then
# the retraining budgets; colours are given to the CPU CIFAR-10 benchmark's 1 and 6 epochs, any other
# budget keeps its method's colour
OPTION_LOOKS = (("progressive", "<", 0), ("floor", "^", 4), ("-norm", "*", 9), ("erk scope", "h", 1),
                 ("magnitude-budget scope", "X", 14), ("layerwise scope", ">", 6), ("1 ep", "p", 16),
                 ("6 ep", "p", 12), (" ep", "p", None))


def series_color(colors: dict, method: str, label: str) -> tuple:
    """The method's colour, except for a collapse guard or a shorter/longer retraining budget, which get
    their own hue from tab20b (the palette's tail, which method colours reach only past twenty methods)
    so that they stand apart from the paper's method in the same plot."""
    import matplotlib

    for part, _, i in OPTION_LOOKS:
        if part in label:
            return colors[method] if i is None else matplotlib.colormaps["tab20b"].colors[i]
    return colors[method]


def style(regime: str) -> tuple[str, str]:
    return REGIME_STYLE.get(regime.split(",")[0], ("-.", "D"))
