"""``kdprune sweep --launcher slurm``: the Slurm path through submitit, run here with its local executor
(jobs are processes, as Slurm's would be; only the scheduler is missing), and its sbatch files."""

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from test_sweep import EXPECTED, SWEEP  # noqa: E402

LOCAL = ["--launcher", "slurm", "--slurm-cluster", "local", "--slurm-gpus", "0", "--slurm-cpus", "1",
         "--slurm-poll", "0.2"]
ONE_SEED = SWEEP.replace("seed: [0, 1]", "seed: [0]")  # 2 runs (teacher-guided, magnitude) sharing 2 stages
assert ONE_SEED != SWEEP


def _rows(store):
    con = sqlite3.connect(str(store))
    try:
        return {(r[0], r[1], r[2]): r[3] for r in con.execute("SELECT run, target_sparsity, regime, top1 FROM results")}
    finally:
        con.close()


@pytest.mark.slow
def test_local_executor_runs_the_grid_like_a_local_sweep(tmp_path, run_cli):
    f = tmp_path / "sweep.yaml"
    f.write_text(ONE_SEED.format(out=tmp_path / "out", student_epochs=2))
    code, out, err = run_cli("sweep", f, *LOCAL, "--slurm-array-parallelism", "2")
    assert code == 0, err
    assert "2 runs: 0 done, 0 queued or running, 2 to submit; 2 shared stages (0 done)" in out
    assert out.count("done   run ") == 2 and "FAILED" not in out
    store = tmp_path / "out" / "results.sqlite"
    rows = _rows(store)
    assert len(rows) == EXPECTED // 2
    con = sqlite3.connect(str(store))  # one writer: the rollback journal, not WAL (unsafe on network filesystems)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert not (tmp_path / "out" / "results.sqlite-wal").exists()
    jobs = json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())
    assert len(jobs) == 4 and {j["phase"] for j in jobs.values()} == {1, 2, 3}
    # the same grid as a local sweep gives the same results, row for row (same hashes, same numbers)
    g = tmp_path / "local.yaml"
    g.write_text(ONE_SEED.format(out=tmp_path / "local", student_epochs=2))
    assert run_cli("--threads", "1", "sweep", g)[0] == 0
    assert _rows(tmp_path / "local" / "results.sqlite") == rows
    # --collect rebuilds the store from the run folders the jobs wrote: the same store
    store.unlink()
    code, out, _ = run_cli("sweep", f, "--collect")
    assert code == 0 and "4 results from 2 finished runs (0 not finished)" in out
    assert _rows(store) == rows
    # submitting again submits nothing; --status reads the folders
    code, out, _ = run_cli("sweep", f, *LOCAL)
    assert code == 0 and "2 runs: 2 done, 0 queued or running, 0 to submit" in out and "done   run" not in out
    code, out, _ = run_cli("sweep", f, "--status")
    assert code == 0 and "2 runs: 2 done, 0 running, 0 failed, 0 to do; shared stages: 2 of 2 done" in out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the job's process through /proc")
def test_interrupted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    """Slurm signals a job (USR2) before its time limit or on preemption; submitit requeues it and the stage
    resumes from its last epoch checkpoint instead of starting over."""
    from kdprune.experiments import cluster

    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / 'out'}
launcher: slurm
slurm: {{cluster: local, gpus: 0, cpus: 1, poll: 0.2}}
grid:
  method: [teacher-guided]
base:
  sparsity: [0.5]
  teacher_arch: resnet20
  teacher_epochs: 4
  student_epochs: 1
  retrain_epochs: 1
  batch_size: 128
  score_batches: 2
  retrain: plain
""")
    _, block = cluster.load_launch(f)
    opts = cluster.build_options(block, {})
    lines, result = [], {}
    t = threading.Thread(target=lambda: result.update(r=cluster.run_cluster(f, opts, log=lines.append)))
    t.start()
    out = tmp_path / "out"
    deadline = time.time() + 300
    signalled = None
    while t.is_alive() and time.time() < deadline:
        ckpt = list(out.glob("shared/teacher-*/teacher/checkpoint.pt"))
        jobs = json.loads((out / "slurm" / "jobs.json").read_text()) if (out / "slurm" / "jobs.json").exists() else {}
        teacher = next((j for k, j in jobs.items() if k.startswith("shared/teacher-")), None)
        if ckpt and teacher and not list(out.glob("shared/teacher-*/teacher/metrics.json")):
            tasks = _children(int(teacher["job"]))
            if tasks:
                os.kill(tasks[0], signal.SIGUSR2)
                signalled = teacher["job"]
                break
        time.sleep(0.05)
    t.join(600)
    assert signalled, "the teacher finished before it could be interrupted"
    rows, failed = result["r"]
    assert failed == 0 and len(rows) == 1, lines
    log = (out / "slurm" / f"{signalled}_0_log.out").read_text()
    assert "interrupted, requeued" in log
    assert log.count(f"Starting with JobEnvironment(job_id={signalled},") == 2  # the same job, started twice
    assert "from its checkpoint" in log.split("interrupted, requeued")[1]
    err = (out / "slurm" / f"{signalled}_0_log.err").read_text()
    assert "teacher resnet20: resuming after epoch" in err and err.count("teacher resnet20: epoch 4/4") == 1
    assert err.count("epoch 1/4 ") == 1  # epochs before the signal are not trained again
    assert json.loads(next(out.glob("shared/teacher-*/teacher/metrics.json")).read_text())


@pytest.mark.slow
def test_failed_job_is_reported_with_its_log_and_others_go_on_with_ddp_jobs(tmp_path, run_cli):
    f = tmp_path / "sweep.yaml"
    # a run folder holding another run's config: its job refuses to resume it and fails; the other run finishes
    f.write_text(f"""out: {tmp_path / 'out'}
grid:
  method: [magnitude, random]
base:
  sparsity: [0.5]
  teacher_arch: resnet20
  teacher_epochs: 1
  student_epochs: 1
  retrain_epochs: 1
  batch_size: 256
  score_batches: 1
  retrain: plain
""")
    from kdprune.experiments.cluster import plan
    from kdprune.experiments.sweep import load_sweep

    out, cfgs = load_sweep(f)
    bad = [i for i in plan(out, cfgs) if i.stage == "run" and i.cfg.method == "random"][0]
    Path(bad.cfg.out).mkdir(parents=True)
    (Path(bad.cfg.out) / "config.yaml").write_text("method: magnitude\nsparsity: [0.7]\n")  # another run's config
    code, out_, err = run_cli("sweep", f, *LOCAL, "--slurm-gpus", "2")  # 2 tasks per job: DDP (gloo here)
    assert code == 1, err
    failed = [ln for ln in out_.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and Path(bad.cfg.out).name in failed[0] and "log: " in failed[0]
    assert Path(failed[0].rsplit("log: ", 1)[1]).is_file()
    assert "1 job failed" in out_ and len(_rows(tmp_path / "out" / "results.sqlite")) == 1
    code, st, _ = run_cli("sweep", f, "--status")
    assert "2 runs: 1 done, 0 running, 1 failed, 0 to do" in st and "log: " in st
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "slurm").glob("*_0_log.out"))
    assert logs.count("(DDP over 2 processes)") == 4  # teacher, student and both runs trained on two ranks


SNAPSHOT = """\
#SBATCH --account=lab
#SBATCH --array=0-1%2
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=6
#SBATCH --dependency=afterok:1001:1002
#SBATCH --error={folder}/%A_%a_0_log.err
#SBATCH --gpus-per-node=2
#SBATCH --job-name=kdprune-out-runs
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mem=48128MB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --open-mode=append
#SBATCH --output={folder}/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@120
#SBATCH --time=1590
#SBATCH --wckey=submitit"""


def _fake_slurm(tmp_path) -> Path:
    """sbatch/srun/sacct stand-ins: sbatch keeps each script and answers with a job id, as Slurm does."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(f"""#!/bin/sh
n=$(ls {tmp_path}/submitted 2>/dev/null | wc -l)
id=$((1001 + n))
mkdir -p {tmp_path}/submitted
cp "$1" {tmp_path}/submitted/$id.sh
echo "Submitted batch job $id"
""")
    for name in ("srun", "sacct"):
        (bin_ / name).write_text("#!/bin/sh\nexit 0\n")
    for p in bin_.iterdir():
        p.chmod(0o755)
    return bin_


def test_sbatch_files_for_a_yaml_match_the_snapshot(tmp_path, run_cli, monkeypatch):
    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / 'out'}
launcher: slurm
slurm:
  gpus: 2
  cpus: 6
  mem_gb: 47
  time: 1-02:30
  partition: gpu
  account: lab
  options: [qos=high, constraint=a100]
grid:
  method: [magnitude, snip]
base:
  sparsity: [0.9, 0.95]
""")
    monkeypatch.setenv("PATH", f"{_fake_slurm(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    code, out, err = run_cli("sweep", f, "--no-wait")
    assert code == 0, err
    # teacher + dense CE student (SNIP's), then the KD student (magnitude's), then the runs after both
    assert "phase 1: submitted array 1001 (2 jobs);" in out and "phase 2: submitted array 1002 (1 job) after afterok:1001;" in out
    assert "phase 3: submitted array 1003 (2 jobs) after afterok:1001:1002;" in out
    script = (tmp_path / "submitted" / "1003.sh").read_text()
    sbatch = "\n".join(ln for ln in script.splitlines() if ln.startswith("#SBATCH"))
    assert sbatch == SNAPSHOT.format(folder=tmp_path / "out" / "slurm")
    first = (tmp_path / "submitted" / "1001.sh").read_text()
    assert "#SBATCH --array=0-1%2" in first and "dependency" not in first
    jobs = json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())
    assert sorted(j["job"] for j in jobs.values()) == ["1001_0", "1001_1", "1002", "1003_0", "1003_1"]  # one job is no array
    # --dry-run prints the same parameters without submitting (and needs no Slurm)
    code, out, _ = run_cli("sweep", f, "--dry-run")
    assert code == 0 and "#SBATCH --ntasks-per-node=2" in out and "#SBATCH --time=1590" in out
    assert len(list((tmp_path / "submitted").iterdir())) == 3


@pytest.mark.parametrize("args, message", [
    (["--slurm-time", "soon"], "slurm time: expected minutes"),
    (["--slurm-gpus", "-1"], "slurm gpus: must be at least 0"),
    (["--slurm-options", "qos"], "slurm options: expected KEY=VALUE"),
    (["--slurm-cluster", "pbs"], "slurm cluster: expected slurm or local"),
    (["--jobs", "2"], "--jobs is for --launcher local"),
])
def test_bad_slurm_values_are_one_line(tmp_path, run_cli, args, message):
    f = tmp_path / "sweep.yaml"
    f.write_text(SWEEP.format(out=tmp_path / "out", student_epochs=1))
    code, out, err = run_cli("sweep", f, "--launcher", "slurm", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_slurm_options_in_the_yaml_leave_run_hashes_alone(tmp_path):
    from kdprune.experiments.sweep import load_sweep

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(SWEEP.format(out="o", student_epochs=1))
    b.write_text(SWEEP.format(out="o", student_epochs=1) + "launcher: slurm\nslurm: {gpus: 4, time: 60}\n")
    assert [c.out for c in load_sweep(a)[1]] == [c.out for c in load_sweep(b)[1]]


def test_time_limits():
    from kdprune.experiments.cluster import minutes

    assert [minutes(v) for v in ("90", "4:00:00", "30:30", "1-00", "1-02:30", "2-00:00:01")] == \
        [90, 240, 31, 1440, 1590, 2881]


def test_status_reads_the_folders_and_the_locks_of_a_local_sweep(tmp_path, run_cli):
    """No job records: a run a local sweep is running (its lock held) is running, a started one is to do."""
    from kdprune.experiments.sweep import _lock, load_sweep

    f = tmp_path / "sweep.yaml"
    f.write_text(SWEEP.format(out=tmp_path / "out", student_epochs=1))
    _, cfgs = load_sweep(f)
    busy, started = Path(cfgs[0].out), Path(cfgs[1].out)
    started.mkdir(parents=True)
    with _lock(busy.with_suffix(".lock"), wait=True):
        code, out, _ = run_cli("sweep", f, "--status")
    assert code == 0 and "4 runs: 0 done, 1 running, 0 failed, 3 to do; shared stages: 0 of 4 done" in out
    assert f"running  run {busy.name}" in out and "(by a local sweep)" in out
    assert f"to do    run {started.name}" in out and "(resumes from its checkpoints)" in out
    code, out, _ = run_cli("sweep", f, "--status")  # the lock released: to do
    assert "0 running" in out and "4 to do" in out


def _checkpoint_teacher_sweep(tmp_path, grid: str = "") -> Path:
    """SWEEP with its teacher given as a file (a random ResNet-20: only the plumbing is under test)."""
    from safetensors.torch import save_file

    from kdprune.models import create_model

    save_file(create_model("resnet20", 10, 1).state_dict(), str(tmp_path / "t.safetensors"))
    f = tmp_path / "sweep.yaml"
    text = SWEEP.format(out=tmp_path / "out", student_epochs=1).replace(
        "teacher_epochs: 1", f"teacher_checkpoint: {tmp_path / 't.safetensors'}")
    f.write_text(text.replace("method: [teacher-guided, magnitude]\n  seed: [0, 1]", grid) if grid else text)
    return f


def test_a_teacher_checkpoint_is_no_shared_stage(tmp_path, run_cli):
    """Nothing trains a teacher given by a file: --status never lists it as a stage to do."""
    code, out, _ = run_cli("sweep", _checkpoint_teacher_sweep(tmp_path), "--status")
    assert code == 0 and "4 runs: 0 done, 0 running, 0 failed, 4 to do" in out
    assert "teacher teacher-" not in out and out.count("to do    student student-") == 2


@pytest.mark.slow
def test_local_executor_runs_a_sweep_whose_teacher_is_a_checkpoint(tmp_path, run_cli):
    """The student's job loads the teacher from its file (it once waited for a teacher stage never written)."""
    f = _checkpoint_teacher_sweep(tmp_path, grid="method: [teacher-guided]\n  seed: [0]")
    code, out, err = run_cli("sweep", f, *LOCAL)
    assert code == 0, err
    assert "FAILED" not in out and "done   student student-" in out and "done   run " in out
    assert "teacher teacher-" not in out
    code, out, _ = run_cli("sweep", f, "--status")
    assert "1 runs: 1 done, 0 running, 0 failed, 0 to do; shared stages: 1 of 1 done" in out


def test_status_and_collect_need_no_teacher_file(tmp_path, run_cli):
    """They read run folders only: a sweep whose teacher file is elsewhere (or gone) still reports."""
    f = _checkpoint_teacher_sweep(tmp_path)
    (tmp_path / "t.safetensors").unlink()
    code, out, err = run_cli("sweep", f, "--status")
    assert code == 0 and "4 runs: 0 done" in out, err
    code, out, err = run_cli("sweep", f, "--collect")
    assert code == 0 and "0 results from 0 finished runs" in out, err
