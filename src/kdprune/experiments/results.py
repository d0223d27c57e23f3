"""Result rows and the markdown table that ``kdprune run`` prints and writes to ``results.md``."""

from __future__ import annotations


def format_table(rows: list[dict]) -> str:
    """One line per sparsity (and variant, where a run records several, e.g. a channel run's unstructured twin):
    achieved sparsity, one-shot (no retraining) and each regime's top-1."""
    if not rows:
        return "no results\n"
    first = rows[0]
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    variants = list(dict.fromkeys(r.get("variant") or "" for r in rows))
    by_s: dict[tuple, dict] = {}
    for r in rows:
        by_s.setdefault((r["target_sparsity"], variants.index(r.get("variant") or "")), {})[r["regime"]] = r
    teacher = next((r["teacher_top1"] for r in rows if r.get("teacher_top1") is not None), None)
    head = (f"{first['method']} on {first['dataset']}: student {first['arch']} (dense {first['dense_top1']:.2f}%)"
            + (f", teacher {first['teacher_arch']} ({teacher:.2f}%)" if teacher is not None else "")
            + f", seed {first['seed']}\n\n")
    several = len(variants) > 1
    cols = ["sparsity"] + ["variant"] * several + ["achieved", "non-zero params", "one-shot top-1"] + [
        f"{g} top-1" for g in regimes] + ["gap to dense (best)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(":---" if c == "variant" else "---:" for c in cols) + "|"]
    for s, v in sorted(by_s):
        group = by_s[s, v]
        any_r = next(iter(group.values()))
        best = max(g["top1"] for g in group.values())
        cells = [f"{s:.2%}"] + [variants[v] or "-"] * several
        cells += [f"{any_r['achieved_sparsity']:.4%}", f"{any_r['nonzero_params']:,} / {any_r['total_params']:,}",
                  _pct(any_r["pruned_top1"])]
        cells += [f"{group[g]['top1']:.2f}" if g in group else "-" for g in regimes]
        cells.append(f"{best - any_r['dense_top1']:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"
