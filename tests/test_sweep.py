import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SWEEP = """out: {out}
grid:
  method: [teacher-guided, magnitude]
  seed: [0, 1]
base:
  sparsity: [0.5, 0.9]
  teacher_arch: resnet20
  teacher_epochs: 1
  student_epochs: {student_epochs}
  retrain_epochs: 1
  batch_size: 128
  score_batches: 2
  retrain: plain
"""
EXPECTED = 2 * 2 * 2  # methods x seeds x sparsities (one regime)


def _write(tmp_path, student_epochs=2):
    f = tmp_path / "sweep.yaml"
    f.write_text(SWEEP.format(out=tmp_path / "out", student_epochs=student_epochs))
    return f


def _rows(tmp_path):
    con = sqlite3.connect(str(tmp_path / "out" / "results.sqlite"))
    return [(r[0], r[1], r[2]) for r in con.execute("SELECT run, target_sparsity, regime FROM results")]


@pytest.mark.slow
def test_sweep_runs_shares_stages_and_rerun_skips(tmp_path, run_cli):
    f = _write(tmp_path)
    code, out, err = run_cli("sweep", f, "--dry-run")
    assert code == 0 and out.count(" new ") == 4 and "estimated" in out
    code, out, err = run_cli("sweep", f)
    assert code == 0, err
    rows = _rows(tmp_path)
    assert len(rows) == EXPECTED == len(set(rows))
    # the KD student of a seed is trained once and shared by both methods (hard links, same dense top-1)
    con = sqlite3.connect(str(tmp_path / "out" / "results.sqlite"))
    dense = {}
    for seed, dense_top1 in con.execute("SELECT seed, dense_top1 FROM results"):  # the schema's columns
        dense.setdefault(seed, set()).add(dense_top1)
    assert all(len(v) == 1 for v in dense.values())
    students = [p for p in (tmp_path / "out" / "shared").glob("student-*") if p.is_dir()]
    assert len(students) == 2 and os.stat(students[0] / "student" / "model.safetensors").st_nlink == 3
    # re-run: everything is skipped, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").rglob("metrics.json")}
    leftover = next((tmp_path / "out" / "runs").glob("*/sparsity-*/plain")) / ".model.safetensors.123.tmp"
    leftover.write_text("what a kill -9 between writing and renaming leaves")
    code, out, _ = run_cli("sweep", f)
    assert code == 0 and "4 done, 0 to run" in out
    assert "removed 1 temporary file" in out and not leftover.exists()
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").rglob("metrics.json")}
    # the report reads the sweep's runs
    code, out, err = run_cli("report", tmp_path / "out" / "runs", "--out", tmp_path / "rep")
    assert code == 0 and "mean ± std over 2 seeds" in out
    # an unreadable store is set aside with one line and rebuilt from the runs' results.jsonl: nothing lost
    before = sorted(_rows(tmp_path))
    for side in ("results.sqlite-wal", "results.sqlite-shm"):
        (tmp_path / "out" / side).unlink(missing_ok=True)
    (tmp_path / "out" / "results.sqlite").write_text("not a database\n")
    code, out, err = run_cli("sweep", f)
    assert code == 0, err
    assert "is not a results store this version reads" in out and "Traceback" not in err
    assert sorted(_rows(tmp_path)) == before
    assert len(list((tmp_path / "out").glob("results.sqlite.unreadable-*"))) == 1
    # so is a store of the layout before rows were keyed by variant (it would drop rows that differ only there)
    (tmp_path / "out" / "results.sqlite").unlink()
    con = sqlite3.connect(str(tmp_path / "out" / "results.sqlite"))
    con.execute("CREATE TABLE results (run TEXT NOT NULL, target_sparsity REAL NOT NULL, regime TEXT NOT NULL, "
                "method TEXT, dataset TEXT, arch TEXT, seed INTEGER, top1 REAL, row TEXT NOT NULL, "
                "PRIMARY KEY (run, target_sparsity, regime))")
    con.commit()
    con.close()
    code, out, err = run_cli("sweep", f)
    assert code == 0 and "is not a results store this version reads" in out, err
    assert sorted(_rows(tmp_path)) == before


def _sweep_proc(f, *extra):
    return subprocess.Popen([sys.executable, "-m", "kdprune", "sweep", str(f), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_doubling(tmp_path):
    f = _write(tmp_path, student_epochs=3)
    p = _sweep_proc(f)
    deadline = time.time() + 300
    while not list((tmp_path / "out" / "runs").glob("*/sparsity-0.5")):
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    q = _sweep_proc(f)
    _, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    rows = _rows(tmp_path)
    assert len(rows) == EXPECTED == len(set(rows))


@pytest.mark.slow
def test_two_sweeps_and_two_workers_on_one_store(tmp_path):
    f = _write(tmp_path)
    a, b = _sweep_proc(f, "--jobs", "2"), _sweep_proc(f)
    for p in (a, b):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    rows = _rows(tmp_path)
    assert len(rows) == EXPECTED == len(set(rows))


@pytest.mark.parametrize("name, extra", [("cpu/digits-all-methods.yaml", 12), ("paper/cifar10.yaml", 6),
                                         ("paper/cifar100.yaml", 6), ("paper/tinyimagenet.yaml", 6)])
def test_shipped_sweep_configs_are_valid(name, extra):
    """Every method at 3 seeds, plus the post-training rows retrained with restart and lr-rewind."""
    from pathlib import Path

    from kdprune.experiments.sweep import load_sweep
    from kdprune.methods import METHODS

    _, cfgs = load_sweep(Path(__file__).parent.parent / "configs" / name)
    pruning = set(METHODS) - {"dense"}  # every pruning method (dense is the unpruned reference)
    assert {c.method for c in cfgs} == pruning
    assert all(c.seed in (0, 1, 2) for c in cfgs) and len(cfgs) == 3 * len(pruning) + extra
    assert {c.retrain_schedule for c in cfgs} == {"finetune", "restart", "lr-rewind"}


@pytest.mark.slow
def test_shared_dense_stage_serves_imp_after_another_method(tmp_path, run_cli):
    """Regression: the shared dense-CE stage trained for one method (here EPSD) lacked IMP's rewind point."""
    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / 'out'}
grid:
  method: [simple-cskd, imp]
base:
  sparsity: [0.5]
  student_epochs: 1
  retrain_epochs: 1
  batch_size: 256
  score_batches: 1
  retrain: plain
  rate: 0.5
""")
    code, out, err = run_cli("sweep", f)
    assert code == 0, err
    (dense,) = [p for p in (tmp_path / "out" / "shared").glob("dense-ce-*") if p.is_dir()]
    assert (dense / "dense-ce" / "rewind-epoch1.safetensors").is_file()
    assert len(_rows(tmp_path)) == 2


@pytest.mark.slow
def test_one_worker_finishes_the_first_teachers_runs_before_it_trains_the_next_teacher(tmp_path, run_cli):
    """One worker trains a shared stage when a run first needs it: a sweep stopped part-way leaves its first
    grid entries whole (the teacher ladder's rungs), not every teacher trained and no result."""
    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / 'out'}
grid:
  - teacher_epochs: [1]
  - teacher_epochs: [2]
base:
  method: teacher-guided
  teacher_arch: resnet20
  sparsity: [0.5]
  student_epochs: 1
  retrain_epochs: 1
  batch_size: 256
  score_batches: 1
  retrain: plain
""")
    code, out, err = run_cli("--threads", "1", "sweep", f)
    assert code == 0, err
    con = sqlite3.connect(str(tmp_path / "out" / "results.sqlite"))
    runs = [tmp_path / "out" / "runs" / r[0] for r in con.execute("SELECT run FROM results ORDER BY rowid")]
    assert [yaml.safe_load((r / "config.yaml").read_text())["teacher_epochs"] for r in runs] == [1, 2]
    # the second run's teacher is a hard link to the second shared teacher, finished after the first run
    second_teacher = next(p for p in (tmp_path / "out" / "shared").glob("teacher-*/teacher/model.safetensors")
                          if os.path.samefile(p, runs[1] / "teacher" / "model.safetensors"))
    done = [(r / "metrics.json").stat().st_mtime_ns for r in runs]
    assert done[0] < second_teacher.stat().st_mtime_ns < done[1]


def test_workers_get_one_gpu_each():
    import multiprocessing as mp

    from kdprune.experiments.sweep import _init_worker, gpu_plan

    assert gpu_plan(4, 4) == [0, 1, 2, 3] and gpu_plan(3, 2) == [0, 1, 0] and gpu_plan(2, 0) == []
    q = mp.get_context("spawn").Queue()
    q.put(3)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        _init_worker(q)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def test_cifar10_cpu_benchmark_configs_are_valid_and_share_their_stages():
    """The three tiers load, share one sweep folder, one teacher for every seed, and cover the issue's methods."""
    from pathlib import Path

    from kdprune.experiments.sweep import _shared_dir, _TEACHER, load_sweep

    cfgs = []
    for tier in ("1-oneshot", "2-baselines", "3-options"):
        out, c = load_sweep(Path(__file__).parent.parent / "configs" / "cpu" / f"cifar10-{tier}.yaml")
        assert out == Path("runs/cifar10-cpu")
        cfgs += c
    assert {c.method for c in cfgs} == {"teacher-guided", "magnitude", "imp", "colt", "snip", "synflow",
                                        "epsd-cskd", "simple-cskd"}
    assert all(c.dataset == "cifar10" and c.image_size == 16 and c.sparsity == [0.9, 0.95, 0.98] for c in cfgs)
    assert len({_shared_dir(out, c, "teacher", _TEACHER) for c in cfgs}) == 1  # teacher_seed: one teacher
    assert {c.seed for c in cfgs if c.method in ("imp", "colt")} == {0, 1}
    assert {c.seed for c in cfgs if c.method not in ("imp", "colt")} == {0, 1, 2}
    tg = {(c.retrain_schedule, c.score_rounds, c.layer_floor, c.score_norm, c.retrain_epochs) for c in cfgs
          if c.method == "teacher-guided"}
    assert {("finetune", 1, 0.0, "none", 3), ("lr-rewind", 1, 0.0, "none", 3), ("restart", 10, 0.0, "none", 3),
            ("restart", 1, 0.01, "none", 3), ("restart", 1, 0.0, "l2", 3), ("restart", 1, 0.0, "none", 1)} <= tg


@pytest.mark.slow
def test_a_run_that_fails_while_it_runs_is_one_line_and_the_others_go_on(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("KDPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / "out"}
grid:
  target_latency: [50x, 1.1x]
base:
  structure: channel
  method: magnitude
  latency_runtime: torch
  channel_round: 8
  teacher_arch: resnet20
  teacher_epochs: 1
  student_epochs: 1
  retrain_epochs: 1
  batch_size: 128
  retrain: plain
""")
    code, out, err = run_cli("--threads", "1", "sweep", f)
    assert code == 1, err
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "--target-latency 50x is out of reach" in failed[0]
    assert "1 run failed" in out and out.count(" 1 new results") == 1
    con = sqlite3.connect(str(tmp_path / "out" / "results.sqlite"))
    assert [r[0] for r in con.execute("SELECT target_latency FROM results")] == [1.1]



_SWEEPS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*/*.yaml")
                 if "grid" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", _SWEEPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_sweep_is_valid(path):
    """Every committed sweep validates (options, choices, the checks between options), data files aside."""
    from kdprune.experiments.sweep import load_sweep

    _, cfgs = load_sweep(path, check_files=False)
    assert cfgs and len({c.out for c in cfgs}) == len(cfgs)  # every run its own folder


def test_the_two_seed_ladder_covers_every_rung_and_reuses_the_scoring_sweeps_strong_teacher():
    """teacher-ladder-seeds-*.yaml: three teachers per dataset, both seeds and both regimes under each, alpha 0.5
    under the weak ones; the strong CIFAR-10 rung's shared stages are those of the CIFAR-10 scoring sweep."""
    from kdprune.experiments.sweep import _shared_dir, _shared_stages, load_sweep

    cpu = Path(__file__).parent.parent / "configs" / "cpu"

    def stages(name):
        out, cfgs = load_sweep(cpu / name, check_files=False)
        return out, cfgs, {_shared_dir(out, c, s, k).name for c in cfgs for s, k in _shared_stages(c)}

    scoring = stages("teacher-ladder-scoring-cifar10.yaml")[2]
    for dataset in ("cifar10", "cifar100"):
        out, cfgs, shared = stages(f"teacher-ladder-seeds-{dataset}.yaml")
        assert out == Path("runs/teacher-ladder-seeds")
        teachers = {(c.teacher_arch, c.teacher_epochs) for c in cfgs}
        assert len(teachers) == 3 and sum(s.startswith("teacher-") for s in shared) == 3
        for t in teachers:
            under = [c for c in cfgs if (c.teacher_arch, c.teacher_epochs) == t]
            assert {(c.method, c.seed) for c in under} == {(m, s) for m in ("dense", "teacher-guided", "magnitude")
                                                          for s in (0, 1)}
            assert all(c.retrain == "both" and c.sparsity == [0.9, 0.95, 0.98] for c in under)
        assert {c.alpha for c in cfgs if c.teacher_arch == "resnet20"} == {0.9, 0.5}
        if dataset == "cifar10":
            assert scoring <= shared
