"""The teacher-strength ladder: differences computed from a small hand-made results table, grouped by teacher;
the dense references as rows; a non-default alpha kept apart."""

import json
from types import SimpleNamespace

import pytest

from kdprune.experiments.ladder import differences

WEAK, STRONG = ("resnet20", 60.0), ("resnet56", 80.0)
CE = {0: 70.0, 1: 72.0}  # dense CE students: mean 71, so the gaps are -11 and +9


def _row(method, regime, seed, s, top1, teacher, variant="restart"):
    arch, t1 = teacher if teacher else (None, None)
    return {"dataset": "digits", "arch": "resnet20", "teacher_arch": arch or "resnet56", "method": method,
            "regime": regime, "variant": variant, "seed": seed, "target_sparsity": s, "achieved_sparsity": s,
            "top1": top1, "pruned_top1": None, "dense_top1": 70.0, "teacher_top1": t1, "epochs": 3,
            "total_epochs": 9, "images_fwd_bwd": 10, "teacher_forwards": 0, "scoring_batches": 0,
            "wall_seconds": 1.0, "total_wall_seconds": 1.0, "nonzero_params": 1, "total_params": 2,
            "teacher_images_fwd_bwd": 0, "out": f"/r/{method}/{arch}/{seed}/{s}/{regime}/{variant}"}


def ladder_rows():
    rows = []
    for teacher in (WEAK, STRONG):
        for seed in (0, 1):
            rows.append(_row("dense", "plain", seed, 0.0, CE[seed], None, variant=""))  # the same under each teacher
    # weak teacher: KD student 1 below CE; teacher-guided 1 below magnitude; kd retraining 2 below plain
    # strong teacher: KD student +4/+3; teacher-guided +4/+3 over magnitude; kd retraining +1/+2 over plain
    for teacher, kd_gain, tg_gain, kd_plain in ((WEAK, (-1, -1), (-1, -1), (-2, -2)),
                                                (STRONG, (4, 3), (4, 3), (1, 2))):
        for seed in (0, 1):
            rows.append(_row("dense", "kd", seed, 0.0, CE[seed] + kd_gain[seed], teacher, variant=""))
            mag = 60.0 + seed
            rows.append(_row("magnitude", "plain", seed, 0.9, mag, teacher))
            rows.append(_row("magnitude", "kd", seed, 0.9, mag, teacher))
            rows.append(_row("teacher-guided", "plain", seed, 0.9, mag + tg_gain[seed], teacher))
            rows.append(_row("teacher-guided", "kd", seed, 0.9, mag + tg_gain[seed] + kd_plain[seed], teacher))
    # the weak teacher at alpha 0.5: its own KD student and teacher-guided run, a column of their own
    rows.append(_row("dense", "kd", 0, 0.0, 71.5, WEAK, variant="alpha 0.5"))
    rows.append(_row("teacher-guided", "plain", 0, 0.9, 58.0, WEAK, variant="restart, alpha 0.5"))
    rows.append(_row("teacher-guided", "kd", 0, 0.9, 59.0, WEAK, variant="restart, alpha 0.5"))
    return rows


def _find(diffs, teacher_top1, kind, method, regime="", variant=""):
    hits = [d for d in diffs if (d.teacher_top1, d.kind, d.method, d.regime, d.variant)
            == (teacher_top1, kind, method, regime, variant)]
    assert len(hits) == 1, (teacher_top1, kind, method, regime, variant, hits)
    return hits[0]


def test_differences_grouped_by_teacher_and_paired_by_seed():
    diffs = differences(ladder_rows())
    weak = _find(diffs, 60.0, "kd-ce student", "dense")
    assert (weak.gap, weak.mean, weak.std, weak.n) == (pytest.approx(-11.0), pytest.approx(-1.0), 0.0, 2)
    strong = _find(diffs, 80.0, "kd-ce student", "dense")
    assert strong.gap == pytest.approx(9.0) and strong.mean == pytest.approx(3.5)
    assert strong.std == pytest.approx(0.5 ** 0.5)
    assert _find(diffs, 60.0, "tg-magnitude", "teacher-guided", "plain").mean == pytest.approx(-1.0)
    assert _find(diffs, 80.0, "tg-magnitude", "teacher-guided", "plain").mean == pytest.approx(3.5)
    # kd retraining on top: tg-magnitude in kd = tg gain + kd-plain gain (magnitude's kd = its plain here)
    assert _find(diffs, 80.0, "tg-magnitude", "teacher-guided", "kd").mean == pytest.approx(5.0)
    assert _find(diffs, 60.0, "kd-plain", "teacher-guided").mean == pytest.approx(-2.0)
    assert _find(diffs, 80.0, "kd-plain", "teacher-guided").mean == pytest.approx(1.5)
    assert _find(diffs, 80.0, "kd-plain", "magnitude").mean == pytest.approx(0.0)
    # alpha 0.5 is its own column, one seed, paired with the CE student of that seed; no magnitude twin
    half = _find(diffs, 60.0, "kd-ce student", "dense", variant="alpha 0.5")
    assert (half.mean, half.n) == (pytest.approx(1.5), 1)
    assert _find(diffs, 60.0, "kd-plain", "teacher-guided", variant="alpha 0.5").mean == pytest.approx(1.0)
    assert not [d for d in diffs if d.kind == "tg-magnitude" and d.variant]


def test_ladder_report_files_and_table(tmp_path, run_cli):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ladder_rows()))
    out = tmp_path / "ladder"
    code, stdout, err = run_cli("report", runs, "--ladder", "--out", out)
    assert code == 0, err
    for name in ("results.csv", "ladder.csv", "ladder.md", "teacher_ladder.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "ladder.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| difference"))
    cols = header.strip("| ").split(" | ")[1:]
    assert cols == ["resnet20 60.00% (gap -11.0)", "resnet20 60.00% (gap -11.0), alpha 0.5",
                    "resnet56 80.00% (gap +9.0)"]  # weakest teacher first
    row = next(line for line in md.splitlines() if line.startswith("| dense KD − CE student"))
    assert row.split(" | ")[1:] == ["-1.00 ± 0.00", "+1.50 (n=1)", "+3.50 ± 0.71 |"]
    assert ("- teacher-guided − magnitude pruning above zero: digits resnet20 60.00%: 0 of 2; "
            "digits resnet56 80.00%: 2 of 2") in md
    assert "- KD − plain retraining above zero: digits resnet20 60.00%: 0 of 2; digits resnet56 80.00%: 1 of 2" in md


def test_ladder_without_ladder_rows_is_one_line(tmp_path, run_cli):
    runs = tmp_path / "runs"
    runs.mkdir()
    rows = [_row("snip", "plain", 0, 0.9, 50.0, None)]
    (runs / "results.jsonl").write_text(json.dumps(rows[0]) + "\n")
    code, _, err = run_cli("report", runs, "--ladder", "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dense" in err
    assert not (tmp_path / "o").exists()


def test_two_results_for_one_cell_are_refused(tmp_path, run_cli):
    rows = ladder_rows()
    rows.append({**rows[-1], "top1": 12.0, "out": "/another/ladder"})  # the same cell and seed, another result
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli("report", runs, "--ladder", "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "two different results for teacher-guided (kd) at 0.9, seed 0" in err and "59.0 and 12.0" in err


def test_a_benchmarks_mixed_schedules_and_lengths_are_compared_within_each(tmp_path, run_cli):
    """A benchmark's rows mix retraining schedules and lengths: each difference compares rows of one setting
    (here only restart at 3 epochs has both criteria), named in the columns and the tally; a ladder's rows,
    which share one, name none (the test above)."""
    rows = []
    for seed in (0, 1):
        for method, regime, top1 in (("magnitude", "plain", 60.0), ("magnitude", "kd", 59.0),
                                     ("teacher-guided", "plain", 61.0), ("teacher-guided", "kd", 58.0)):
            rows.append(_row(method, regime, seed, 0.9, top1 + seed, STRONG))
        # the paper's method fine-tuned, and restarted for 1 epoch: no magnitude twin, their own kd - plain
        rows.append({**_row("teacher-guided", "plain", seed, 0.9, 50.0, STRONG, variant="finetune"),
                     "out": f"/ft/{seed}/plain"})
        rows.append({**_row("teacher-guided", "kd", seed, 0.9, 53.0, STRONG, variant="finetune"),
                     "out": f"/ft/{seed}/kd"})
        rows.append({**_row("teacher-guided", "plain", seed, 0.9, 40.0, STRONG), "epochs": 1, "out": f"/e1/{seed}"})
    diffs = differences(rows)
    assert sorted((d.kind, d.method, d.regime, d.setting, round(d.mean, 6), d.n) for d in diffs) == [
        ("kd-plain", "magnitude", "", "restart, 3 ep", -1.0, 2),
        ("kd-plain", "teacher-guided", "", "finetune, 3 ep", 3.0, 2),
        ("kd-plain", "teacher-guided", "", "restart, 3 ep", -3.0, 2),
        ("tg-magnitude", "teacher-guided", "kd", "restart, 3 ep", -1.0, 2),
        ("tg-magnitude", "teacher-guided", "plain", "restart, 3 ep", 1.0, 2)]
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli("report", runs, "--ladder", "--out", tmp_path / "o")
    assert code == 0, err
    md = (tmp_path / "o" / "ladder.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| difference"))
    assert header.strip("| ").split(" | ")[1:] == ["resnet56 80.00% (gap –), finetune, 3 ep",
                                                   "resnet56 80.00% (gap –), restart, 3 ep"]
    assert "- teacher-guided − magnitude pruning above zero: digits resnet56 80.00% (restart, 3 ep): 1 of 2" in md


def test_alpha_other_than_the_papers_names_the_row():
    from kdprune.methods.context import variant

    cfg = SimpleNamespace(retrain_schedule="restart", score_rounds=1, layer_floor=0.0, score_norm="none", alpha=0.9)
    assert variant(cfg) == "restart"  # the paper's alpha: rows as before
    assert variant(SimpleNamespace(**{**vars(cfg), "alpha": 0.5})) == "restart, alpha 0.5"


@pytest.mark.slow
def test_dense_method_records_both_students_and_resumes(tmp_path):
    from kdprune.experiments.config import RunConfig, build_config
    from kdprune.experiments.pipeline import run_pipeline

    cfg = build_config(RunConfig, {"out": str(tmp_path), "method": "dense", "teacher_arch": "resnet20",
                                   "teacher_epochs": 1, "student_epochs": 1, "batch_size": 128, "retrain": "both",
                                   "progress": False})
    rows = {r["regime"]: r for r in run_pipeline(cfg)}
    assert set(rows) == {"plain", "kd"}
    ce = json.loads((tmp_path / "dense-ce" / "metrics.json").read_text())
    kd = json.loads((tmp_path / "student" / "metrics.json").read_text())
    teacher = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert rows["plain"]["top1"] == ce["top1"] and rows["kd"]["top1"] == kd["top1"]
    assert rows["plain"]["dense_top1"] == ce["top1"] and rows["kd"]["dense_top1"] == kd["top1"]
    assert rows["plain"]["teacher_top1"] is None and rows["kd"]["teacher_top1"] == teacher["top1"]
    assert rows["plain"]["achieved_sparsity"] == 0.0 and rows["kd"]["target_sparsity"] == 0.0
    # the KD row pays for its teacher, the CE row does not
    assert rows["kd"]["images_fwd_bwd"] == kd["images_fwd_bwd"] + teacher["images_fwd_bwd"]
    assert rows["plain"]["images_fwd_bwd"] == ce["images_fwd_bwd"]
    again = run_pipeline(build_config(RunConfig, {**vars(cfg), "resume": True}))  # resumed: nothing trained again
    assert sorted(r["top1"] for r in again) == sorted(r["top1"] for r in rows.values())
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


def test_each_panels_legend_lies_under_it_clear_of_the_points(tmp_path, monkeypatch):
    """Inside the panel a legend covered the points at its edge (the strongest teacher's): now every panel's legend
    is drawn under its axes, and the figure is still written."""
    import kdprune.experiments.ladder as ladder

    drawn = []
    real_savefig = ladder.savefig

    def keep(fig, path):
        fig.canvas.draw()
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None, ax.get_title()
            box, panel = legend.get_window_extent(), ax.get_window_extent()
            drawn.append((ax.get_title(), box.y1 <= panel.y0))
        real_savefig(fig, path)

    monkeypatch.setattr(ladder, "savefig", keep)
    assert ladder.plot_ladder(differences(ladder_rows()), tmp_path / "ladder.png")
    assert len(drawn) == 3 and all(below for _, below in drawn), drawn
    assert (tmp_path / "ladder.png").stat().st_size > 0
