import csv
import json
import os

import pytest


def _row(method, regime, seed, s, top1, dense=99.0, **kw):
    return {"method": method, "regime": regime, "seed": seed, "target_sparsity": s, "achieved_sparsity": s,
            "top1": top1, "pruned_top1": 10.0, "dense_top1": dense, "teacher_top1": 98.0, "dataset": "digits",
            "arch": "resnet20", "teacher_arch": "resnet56", "epochs": 30, "total_epochs": 150,
            "images_fwd_bwd": 1000 if method == "teacher-guided" else 5000, "teacher_forwards": 0,
            "scoring_batches": 2, "wall_seconds": 1.0, "total_wall_seconds": 2.0, "nonzero_params": 1,
            "total_params": 2, "out": f"/runs/{method}/{seed}/{s}/{regime}", **kw}


@pytest.fixture
def runs(tmp_path):
    levels = (0.5, 0.75, 0.9, 0.94, 0.98)
    for seed, bump in ((0, 0.0), (1, 1.0), (2, 2.0)):
        d = tmp_path / f"tg-{seed}"
        d.mkdir()
        rows = [_row("teacher-guided", "plain", seed, s, 90.0 - 10 * s + bump) for s in levels]
        rows += [_row("magnitude", "plain", seed, s, 91.0 - 20 * s) for s in levels]
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_report_csv_means_plots(runs, tmp_path, run_cli):
    out = tmp_path / "report"
    code, stdout, err = run_cli("report", runs, "--out", out)
    assert code == 0, err
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30  # one per run: 3 seeds x 2 methods x 5 sparsities
    md = (out / "results.md").read_text()
    assert "mean ± std over 3 seeds" in md
    accuracy = md.split("###")[0]  # the accuracy table comes before the cost table
    table = {l.split(" | ")[0][2:]: l.strip("| ").split(" | ")[1:] for l in accuracy.splitlines() if l.startswith("| ")}
    assert table["method (regime)"] == ["50%", "75%", "90%", "94%", "98%"]
    # teacher-guided at 90%: 81, 82, 83 -> mean 82, sample std 1 (best: bold); magnitude: 73 three times
    assert table["teacher-guided (plain)"][2] == "**82.00 ± 1.00**" and table["magnitude (plain)"][2] == "73.00 ± 0.00"
    # 50%: teacher-guided 85, 86, 87 (bold, best); magnitude 81 each seed (not bold)
    assert table["teacher-guided (plain)"][0] == "**86.00 ± 1.00**" and table["magnitude (plain)"][0] == "81.00 ± 0.00"
    # cost: 5000 images vs the method's 1000 at every sparsity
    cost = next(l for l in md.splitlines() if l.startswith("| magnitude (plain) | 150 |"))
    assert cost.endswith("| 5.00 · 5.00 · 5.00 · 5.00 · 5.00 |")
    for png in ("accuracy_vs_sparsity_digits.png", "radar.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_errors(tmp_path, run_cli):
    code, _, err = run_cli("report", tmp_path / "missing", "--out", tmp_path / "r")
    assert code == 2 and "no such run folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 2 and "no results found" in err


@pytest.mark.slow
def test_published_numbers_printed_beside_ours(runs, tmp_path, run_cli):
    (tmp_path / "pub.yaml").write_text("digits:\n  EPSD (paper): {0.9: 91.5, 0.98: 80.25}\n")
    code, out, err = run_cli("report", runs, "--out", tmp_path / "r", "--published", tmp_path / "pub.yaml")
    assert code == 0, err
    pub = next(l for l in out.splitlines() if l.startswith("| EPSD (paper) (published) |"))
    assert pub.endswith("| – | – | 91.50 | – | 80.25 |")  # under the 90% and 98% columns
    (tmp_path / "bad.yaml").write_text("digits: [1, 2]\n")
    code, _, err = run_cli("report", runs, "--out", tmp_path / "r", "--published", tmp_path / "bad.yaml")
    assert code == 2 and "expected dataset" in err


@pytest.mark.slow
def test_one_seed_report_shows_no_spread_and_no_radar_for_one_method(tmp_path, run_cli):
    d = tmp_path / "one"
    d.mkdir()
    rows = [_row("teacher-guided", "plain", 0, s, 90.0 - 10 * s) for s in (0.5, 0.75, 0.9, 0.94, 0.98)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli("report", d, "--out", tmp_path / "rep")
    assert code == 0, err
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "one seed" in md and "±" not in md.split("### ")[0]
    assert not (tmp_path / "rep" / "radar.png").exists()


def _compute_report(tmp_path, run_cli, imp_top1, seeds=(0, 1)):
    d = tmp_path / "c"
    d.mkdir()
    rows = []
    for seed in seeds:
        # one-shot at three retraining budgets (1, 3 and 6 epochs), IMP and COLT
        for epochs, top1, imgs in ((1, 95.0, 2000), (3, 97.8, 3000), (6, 98.2, 6000)):
            rows.append(_row("teacher-guided", "kd", seed, 0.9, top1, epochs=epochs, images_fwd_bwd=imgs,
                             teacher_images_fwd_bwd=1000, variant="restart",
                             out=f"/runs/tg/{seed}/{epochs}"))
        rows.append(_row("imp", "plain", seed, 0.9, imp_top1, images_fwd_bwd=20000, teacher_images_fwd_bwd=0,
                         out=f"/runs/imp/{seed}"))
        rows.append(_row("colt", "plain", seed, 0.9, 97.0, images_fwd_bwd=15000, teacher_images_fwd_bwd=0,
                         out=f"/runs/colt/{seed}"))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli("report", d, "--out", tmp_path / "rep")
    assert code == 0, err
    return (tmp_path / "rep" / "results.md").read_text()


@pytest.mark.slow
def test_accuracy_against_compute_names_the_cheapest_budget_near_imp(tmp_path, run_cli):
    md = _compute_report(tmp_path, run_cli, imp_top1=98.0)  # 3 and 6 epochs come within 0.5 of IMP
    assert "accuracy against compute at 90%" in md
    assert "**kd, 3 ep** at 97.80%, 0.150 of IMP's images with the teacher's training counted (0.100 with a " \
           "pre-trained teacher), 0.200 of COLT's (0.133)" in md
    assert (tmp_path / "rep" / "accuracy_vs_compute_digits.png").stat().st_size > 10_000


@pytest.mark.slow
def test_accuracy_against_compute_shows_no_spread_for_one_seed(tmp_path, run_cli):
    md = _compute_report(tmp_path, run_cli, imp_top1=98.0, seeds=(0,))
    assert "| imp (plain) | 98.00 | 20,000 | 20,000 |" in md and "| colt (plain) | 97.00 | 15,000 | 15,000 |" in md
    assert "±" not in md.split("accuracy against compute at 90%")[1].split("### ")[0]
    assert (tmp_path / "rep" / "accuracy_vs_compute_digits.png").stat().st_size > 10_000
    (tmp_path / "two").mkdir()
    two = _compute_report(tmp_path / "two", run_cli, imp_top1=98.0)
    assert "| imp (plain) | 98.00 ± 0.00 | 20,000 | 20,000 |" in two  # two seeds: the spread, even when it is 0


def test_accuracy_against_compute_gives_the_gap_and_cost_when_no_budget_is_near_imp(tmp_path, run_cli):
    md = _compute_report(tmp_path, run_cli, imp_top1=99.5)
    assert "No teacher-guided budget comes within 0.5 points of IMP (99.50%); its best (kd, 6 ep, 98.20%) is " \
           "1.30 points below, at 0.300 of IMP's images with the teacher's training counted (0.250 with a " \
           "pre-trained teacher), 0.400 of COLT's (0.333)." in md


def test_channel_rows_are_labelled_by_their_macs_reduction(tmp_path, run_cli):
    d = tmp_path / "ch"
    d.mkdir()
    rows = [_row(m, "kd", seed, 1 - 1 / f, 95.0 - f, structure="channel", target_macs=f, variant="channel")
            for m in ("teacher-guided", "magnitude") for seed in (0, 1) for f in (2.0, 4.0)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli("report", d, "--out", tmp_path / "rep")
    assert code == 0, err
    assert "| method (regime) | 2x MACs | 4x MACs |" in (tmp_path / "rep" / "results.md").read_text()


def test_channel_rows_of_a_parameter_target_are_labelled_by_the_parameters_removed(tmp_path, run_cli):
    d = tmp_path / "ch"
    d.mkdir()
    rows = [_row(m, "kd", seed, p, 95.0 - 10 * p, structure="channel", target_macs=None, variant="channel")
            for m in ("teacher-guided", "magnitude") for seed in (0, 1) for p in (0.5, 0.75)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli("report", d, "--out", tmp_path / "rep")
    assert code == 0, err
    assert "| method (regime) | 50% params | 75% params |" in (tmp_path / "rep" / "results.md").read_text()


def test_collapse_guards_and_budgets_get_their_own_colours():
    from kdprune.experiments.plotstyle import method_colors as _colors, series_color as _series_color

    colors = _colors(["teacher-guided", "magnitude", "imp"])
    labels = ["kd, restart, progressive R=10", "kd, restart, floor 0.01", "kd, restart, l2-norm",
              "plain, restart, 1 ep", "plain, restart, 6 ep"]
    looks = [_series_color(colors, "teacher-guided", lab) for lab in labels]
    assert len(set(looks)) == len(labels)  # each option apart from the others
    assert not set(looks) & set(colors.values())  # and from every method's colour
    assert _series_color(colors, "teacher-guided", "kd, restart") == colors["teacher-guided"]


def _many_methods() -> list[dict]:
    """Every family and every kind of ablation, two seeds, three levels."""
    rows = []
    for seed in (0, 1):
        for s in (0.9, 0.95, 0.98):
            def add(method, regime, variant="", epochs=30, top1=80.0):
                rows.append(_row(method, regime, seed, s, top1 - 10 * s + seed, variant=variant, epochs=epochs))
            for regime in ("plain", "kd"):
                for v in ("finetune", "lr-rewind", "restart"):
                    add("teacher-guided", regime, v)
                    add("magnitude", regime, v)
            for ep in (10, 60):
                add("teacher-guided", "plain", "restart", epochs=ep)
            for guard in ("restart, l2-norm", "restart, floor 0.01", "restart, progressive R=10"):
                add("teacher-guided", "kd", guard)
            for m in ("snip", "grasp", "synflow", "imp"):
                add(m, "plain")
                add(m, "kd", top1=81.0)
            add("colt", "plain", "own heads")
            for m in ("epsd-cskd", "epsd-pskd", "epsd-dlb", "simple-cskd", "simple-pskd", "simple-dlb"):
                add(m, "sd")
            add("epg", "plain")
    return rows


def test_figures_have_at_most_eight_series_a_panel_and_show_every_series():
    from kdprune.experiments.report import MAX_SERIES, ablation_panels, aggregate, comparison_panels

    agg = aggregate(_many_methods())
    main, ablations = comparison_panels(agg, "digits"), ablation_panels(agg, "digits")
    assert all(len(members) <= MAX_SERIES for _, members in main + ablations)
    shown = {sr for _, members in main + ablations for sr in members}
    assert shown == {k[1:4] for k in agg}  # nothing is left out of both figures
    # the main figure: the paper's method in its main setting (restart, the most-run budget) in every panel,
    # never an ablation; one series per baseline outside the paper's own family (its best regime)
    for title, members in main:
        paper = [sr for sr in members if sr[1] == "teacher-guided"]
        assert paper and all(", l2-norm" not in sr[2] and "finetune" not in sr[2] and " ep" not in sr[2]
                             or sr[2].endswith("30 ep") for sr in paper), (title, paper)
    snip = [sr for _, members in main for sr in members if sr[1] == "snip"]
    assert snip == [("resnet20", "snip", "kd")]  # kd is snip's best regime here
    titles = [t for t, _ in main]
    assert titles[0] == "the same recipe, other criteria" and "early pruning with self-distillation" in titles
    guards = next(m for t, m in ablations if t == "teacher-guided: collapse guards")
    assert {sr[2] for sr in guards} >= {"kd, restart, l2-norm", "kd, restart, floor 0.01"}


def test_a_report_redrawn_from_its_csv_is_the_same_report(tmp_path, run_cli):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _many_methods()))
    code, _, err = run_cli("report", runs, "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = run_cli("report", tmp_path / "a" / "results.csv", "--out", tmp_path / "b")
    assert code == 0, err
    for f in ("results.md", "results.csv"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    for png in ("accuracy_vs_sparsity_digits.png", "ablations_digits.png", "accuracy_vs_compute_digits.png"):
        assert (tmp_path / "b" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    code, _, err = run_cli("report", tmp_path / "bad.csv", "--out", tmp_path / "c")
    assert code == 2 and "not a kdprune results" in err


def test_report_of_a_sweep_file_leaves_out_its_earlier_versions_runs(tmp_path, run_cli):
    """--sweep FILE reads only that file's runs: a run of the file's earlier version in the same folder (a
    changed grid) is left out, where the folder itself would include it."""
    from kdprune.experiments.sweep import load_sweep

    f = tmp_path / "sweep.yaml"
    f.write_text(f"out: {tmp_path / 'out'}\ngrid:\n  method: [teacher-guided, magnitude]\n"
                 f"base:\n  sparsity: [0.9]\n  retrain: plain\n  teacher_checkpoint: {tmp_path / 'gone.safetensors'}\n")
    _, cfgs = load_sweep(f, check_files=False)  # the teacher checkpoint is gone: reading results needs none
    stale = tmp_path / "out" / "runs" / "0123456789ab"  # a run the file no longer lists
    for d, method, top1 in ((cfgs[0].out, "teacher-guided", 80.0), (cfgs[1].out, "magnitude", 70.0),
                            (stale, "teacher-guided", 10.0)):
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/results.jsonl", "w") as fh:
            fh.write(json.dumps(_row(method, "plain", 0, 0.9, top1, out=str(d))) + "\n")
    code, out, err = run_cli("report", "--sweep", f, "--out", tmp_path / "r")
    assert code == 0, err
    assert "2 results" in out and "| teacher-guided (plain) | **80.00** |" in out
    code, out, _ = run_cli("report", tmp_path / "out" / "runs", "--out", tmp_path / "all")
    assert code == 0 and "3 results" in out  # the folder alone takes the stale run too
    code, _, err = run_cli("report", "--out", tmp_path / "none")
    assert code == 2 and "--sweep" in err and len(err.strip().splitlines()) == 1


def test_compute_table_names_the_level_a_method_stops_at():
    """COLT with its own heads may not reach the highest level: its row says which level its cost is for."""
    from kdprune.experiments.report import _markdown, aggregate

    rows = [_row("teacher-guided", "plain", 0, s, 80.0) for s in (0.9, 0.95, 0.98)]
    rows += [_row("colt", "plain", 0, s, 78.0, variant="own heads") for s in (0.9, 0.95)]
    md = _markdown(aggregate(rows))
    table = md.split("compute (means over seeds)", 1)[1]
    assert "| colt (plain), to 95% |" in table and "| teacher-guided (plain) |" in table
    assert "highest level (98%, or the lower one a row names" in table


def test_the_report_says_where_its_results_ran(tmp_path, run_cli):
    d = tmp_path / "runs"
    d.mkdir()
    rows = [_row("magnitude", "plain", seed, 0.9, 70.0 + seed, hardware=hw)
            for seed, hw in ((0, "cpu A, 2 threads"), (1, "cpu A, 2 threads"), (2, "cpu B, 1 thread"))]
    rows.append(_row("magnitude", "plain", 3, 0.9, 71.0))  # a run from before the field
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli("report", d, "--out", tmp_path / "r")
    assert code == 0, err
    md = (tmp_path / "r" / "results.md").read_text()
    where = md.split("## Where the results ran")[1]
    assert [l for l in where.splitlines() if l.startswith("| ") and "results |" not in l] == [
        "| cpu A, 2 threads | 2 |", "| cpu B, 1 thread | 1 |", "| not recorded | 1 |"]
    with open(tmp_path / "r" / "results.csv") as f:
        assert sorted(r["hardware"] for r in csv.DictReader(f)) == ["", "cpu A, 2 threads", "cpu A, 2 threads",
                                                                     "cpu B, 1 thread"]
    rows = [_row("magnitude", "plain", 0, 0.9, 70.0)]  # no row says: no section
    (d / "results.jsonl").write_text(json.dumps(rows[0]) + "\n")
    code, _, err = run_cli("report", d, "--out", tmp_path / "r2")
    assert code == 0 and "Where the results ran" not in (tmp_path / "r2" / "results.md").read_text()
