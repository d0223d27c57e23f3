"""``kdprune sweep FILE --launcher slurm``: the sweep's grid as Slurm job arrays, through submitit.

The grid is the one :mod:`kdprune.experiments.sweep` plans (same run hashes, same shared stages), in three
phases, each one job array: (1) the teachers and dense CE students, (2) the KD students, (3) the runs. A phase
waits for the jobs of the phases before it (``--dependency=afterok``; a failed prerequisite cancels its
dependents instead of leaving them pending). Every job writes only its own folder, atomically, as a local
sweep does; no job opens ``OUT/results.sqlite``: the submitting process fills it as runs finish (SQLite in
rollback-journal mode, one writer), or ``kdprune sweep FILE --collect`` rebuilds it from the run folders.
Nothing depends on file locks working across nodes: the submitter alone decides what to run, and records the
job of every folder in ``OUT/slurm/jobs.json`` so that a second submission skips what is queued or running.

A job that reaches its time limit or is preempted gets submitit's signal, is requeued (``requeues`` times
for time limits; preemptions do not count) and resumes from the last epoch checkpoint of the stage it was
in. A run with ``gpus > 1`` runs one task per GPU and trains with DDP, as under torchrun (rank and world size
from the job's environment).

``cluster: local`` runs the same path with submitit's local executor (jobs are processes on this machine,
``array_parallelism`` at a time): for tests and for trying a cluster sweep on a workstation.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


from kdprune.errors import UserError, first_line
from kdprune.experiments.config import RunConfig, _f, _field_types, coerce

LAUNCHERS = ("local", "slurm")
_PHASES = {1: ("stages", "teachers and dense CE students"), 2: ("students", "KD students"), 3: ("runs", "runs")}
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
           "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STAGE_OUT", "SIGNALING", "UNREACHABLE"}


@dataclass
class SlurmOptions:
    """Resources of every job (``--slurm-*`` flags, or the sweep YAML's ``slurm:`` block)."""

    cluster: str = _f("slurm", "slurm (sbatch) | local (submitit's local executor: the same path as processes on "
                               "this machine, for tests)")
    gpus: int = _f(1, "GPUs per run; more than 1 runs one task per GPU and trains with DDP")
    cpus: int = _f(8, "CPUs per task (also torch's thread count in the job)")
    mem_gb: float | None = _f(None, "memory per job in GB (none: the partition's default)")
    time: str = _f("4:00:00", "time limit per job: minutes, H:MM:SS or D-HH:MM:SS; a job that reaches it is "
                              "requeued and resumes from its last epoch checkpoint")
    partition: str | None = _f(None, "Slurm partition")
    account: str | None = _f(None, "Slurm account")
    array_parallelism: int = _f(64, "at most this many jobs of one array run at once")
    options: list[str] = _f([], "extra sbatch options, KEY=VALUE, comma-separated (e.g. qos=high,constraint=a100)")
    setup: list[str] = _f([], "shell lines run in the job before kdprune (e.g. module load cuda), comma-separated")
    requeues: int = _f(3, "how many times a job that reaches its time limit is requeued")
    poll: float = _f(30.0, "seconds between looks at the jobs' states while waiting")


def minutes(value: str) -> int:
    """A Slurm time limit (minutes, MM:SS, H:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise UserError(f"slurm time: expected minutes, H:MM:SS or D-HH:MM:SS, got {value!r}")
    days, parts = m.group(1), [int(p) for p in m.group(2, 3, 4) if p is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = (parts + [0, 0])[:3]
        total = int(days) * 24 * 60 + h * 60 + mi + s / 60
    else:  # MM, MM:SS, HH:MM:SS
        h, mi, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
        total = h * 60 + mi + s / 60
    total = int(-(-total // 1))
    if total < 1:
        raise UserError(f"slurm time: the limit must be at least one minute, got {value!r}")
    return total


def extra_options(opts: SlurmOptions) -> dict[str, str]:
    out = {}
    for item in opts.options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().lstrip("-"):
            raise UserError(f"slurm options: expected KEY=VALUE, got {item!r}")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def build_options(block: dict | None, flags: dict[str, Any], source: str = "slurm") -> SlurmOptions:
    """Defaults < the YAML ``slurm:`` block < ``--slurm-*`` flags; every value checked (one-line errors)."""
    types_ = _field_types(SlurmOptions)
    values = {}
    if block is not None and not isinstance(block, dict):
        raise UserError(f"{source}: expected a mapping of option: value")
    for raw, v in (block or {}).items():
        key = str(raw).replace("-", "_")
        if key not in types_:
            raise UserError(f"{source}: unknown key {raw!r} (known: {', '.join(f.name for f in fields(SlurmOptions))})")
        values[key] = coerce(types_[key], v, f"{source}: {raw}")
    for key, v in flags.items():
        values[key] = coerce(types_[key], v, "--slurm-" + key.replace("_", "-"))
    opts = SlurmOptions(**values)
    if opts.cluster not in ("slurm", "local"):
        raise UserError(f"slurm cluster: expected slurm or local, got {opts.cluster!r}")
    for name, low in (("gpus", 0), ("cpus", 1), ("array_parallelism", 1), ("requeues", 0)):
        if getattr(opts, name) < low:
            raise UserError(f"slurm {name.replace('_', '-')}: must be at least {low}, got {getattr(opts, name)}")
    if opts.mem_gb is not None and opts.mem_gb <= 0:
        raise UserError(f"slurm mem-gb: must be positive, got {opts.mem_gb}")
    if opts.poll <= 0:
        raise UserError(f"slurm poll: must be positive, got {opts.poll}")
    minutes(opts.time)
    extra_options(opts)
    return opts


def load_launch(path: str | Path) -> tuple[str | None, dict | None]:
    """The sweep YAML's ``launcher`` and ``slurm`` keys (they do not enter any run's hash)."""
    from kdprune.experiments.sweep import read_spec

    spec = read_spec(path)
    spec = spec if isinstance(spec, dict) else {}
    launcher = spec.get("launcher")
    if launcher is not None and launcher not in LAUNCHERS:
        raise UserError(f"{path}: launcher must be local or slurm, got {launcher!r}")
    return launcher, spec.get("slurm")


def tasks_per_run(opts: SlurmOptions) -> int:
    return max(1, opts.gpus)


def sbatch_parameters(opts: SlurmOptions, name: str, dependency: str | None = None) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for one phase's array."""
    params: dict[str, Any] = {"job_name": name, "time": minutes(opts.time), "nodes": 1,
                              "ntasks_per_node": tasks_per_run(opts), "cpus_per_task": opts.cpus,
                              "array_parallelism": opts.array_parallelism, "signal_delay_s": 120}
    if opts.gpus:
        params["gpus_per_node"] = opts.gpus
    if opts.mem_gb is not None:
        params["mem"] = f"{int(-(-opts.mem_gb * 1024 // 1))}MB"
    for key in ("partition", "account"):
        if getattr(opts, key):
            params[key] = getattr(opts, key)
    if opts.setup:
        params["setup"] = list(opts.setup)
    extra = extra_options(opts)
    if dependency:
        params["dependency"] = dependency
        extra = {"kill-on-invalid-dep": "yes", **extra}
    if extra:
        params["additional_parameters"] = extra
    return params


def local_parameters(opts: SlurmOptions) -> dict[str, Any]:
    """The same resources for submitit's LocalExecutor."""
    params: dict[str, Any] = {"timeout_min": minutes(opts.time), "tasks_per_node": tasks_per_run(opts),
                              "signal_delay_s": 30}
    if opts.gpus:
        import torch

        if torch.cuda.is_available():
            params["gpus_per_node"] = opts.gpus
    if opts.setup:
        params["setup"] = list(opts.setup)
    return params


def sbatch_script(opts: SlurmOptions, folder: Path, name: str, count: int, dependency: str | None = None) -> str:
    """The sbatch file submitit writes for an array of ``count`` jobs (for ``--dry-run``; needs no Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(folder).absolute()
    command = f"{sys.executable} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command, folder, map_count=count, **sbatch_parameters(opts, name, dependency))


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'kdprune[cluster]'") from None
    return submitit


# ----------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Item:
    """One job: a shared stage (teacher, KD student, dense CE student) or one run of the grid."""

    key: str        # "shared/<stage>-<hash>" or "runs/<hash>"
    phase: int      # 1 teachers and dense CE students, 2 KD students, 3 runs
    stage: str      # "run" or the shared stage
    cfg: RunConfig

    def done_file(self, out: Path) -> Path:
        if self.stage == "run":
            return Path(self.cfg.out) / "metrics.json"
        return out / self.key / self.stage / "metrics.json"

    def folder(self, out: Path) -> Path:
        return Path(self.cfg.out) if self.stage == "run" else out / self.key

    def label(self) -> str:
        c = self.cfg
        if self.stage == "run":
            return f"run {Path(c.out).name} ({c.method}, {c.dataset}, seed {c.seed})"
        return f"{self.stage} {self.key.split('/', 1)[1]}"


def plan(out: Path, configs: list[RunConfig]) -> list[Item]:
    from kdprune.experiments.sweep import _shared_dir, _shared_stages

    items: dict[str, Item] = {}
    for cfg in configs:
        for stage, keys in _shared_stages(cfg):
            key = f"shared/{_shared_dir(out, cfg, stage, keys).name}"
            items.setdefault(key, Item(key, 2 if stage == "student" else 1, stage, cfg))
    shared = sorted(items.values(), key=lambda i: (i.phase, i.key))
    return shared + [Item(f"runs/{Path(c.out).name}", 3, "run", c) for c in configs]


# ----------------------------------------------------------------------------------------- the job


class SweepJob:
    """What every array element runs: one shared stage or one run, in its own folder, never the store.

    submitit calls :meth:`checkpoint` on a time limit or preemption and requeues the same call; the stage
    then resumes from its ``checkpoint.pt`` (every stage resumes, as ``kdprune run --resume`` does).
    """

    def __init__(self, out: Path, cwd: str, threads: int):
        self.out, self.cwd, self.threads = out, cwd, threads

    def __call__(self, item: Item) -> int:
        os.chdir(self.cwd)
        from kdprune import distributed
        from kdprune.threads import set_threads

        set_threads(self.threads)
        env = _submitit().JobEnvironment()
        if env.num_tasks > 1:  # one task per GPU: the DDP path torchrun takes, from the job's environment
            _submitit().helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            distributed.init_from_env()
        try:
            return self._work(item)
        finally:
            distributed.shutdown()

    def checkpoint(self, item: Item):
        from submitit.helpers import DelayedSubmission

        print(f"kdprune job: {item.label()}: interrupted, requeued; it resumes from its last epoch checkpoint",
              flush=True)
        return DelayedSubmission(self, item)

    def _work(self, item: Item) -> int:
        from kdprune import distributed
        from kdprune.experiments.sweep import (_TEACHER, _link_stage, _shared_dir, _shared_stages, _train_shared_locked,
                                               teacher_is_shared)

        folder = item.folder(self.out)
        started = [p.parent for p in sorted(folder.rglob("checkpoint.pt")) if not (p.parent / "metrics.json").exists()]
        if distributed.rank() == 0:
            resumes = f"; resumes {', '.join(str(p) for p in started)} from its checkpoint" if started else ""
            ddp = f" (DDP over {distributed.world_size()} processes)" if distributed.is_distributed() else ""
            print(f"kdprune job: {item.label()} in {folder}{ddp}{resumes}", flush=True)
        if item.stage != "run":
            keys = dict(_shared_stages(item.cfg))[item.stage]
            if item.stage == "student" and teacher_is_shared(item.cfg):
                _require(_shared_dir(self.out, item.cfg, "teacher", _TEACHER) / "teacher")
            _train_shared_locked(self.out, item.cfg, item.stage, keys, folder)
            return 0
        from kdprune.experiments.pipeline import run_pipeline

        for stage, keys in _shared_stages(item.cfg):
            src = _shared_dir(self.out, item.cfg, stage, keys) / stage
            _require(src)
            _link_stage(src, Path(item.cfg.out) / stage)
        return len(run_pipeline(replace(item.cfg, resume=True)))


def _require(stage_dir: Path) -> None:
    if not (stage_dir / "metrics.json").is_file():
        raise RuntimeError(f"{stage_dir} is not finished (did its job fail?); run the sweep again to resubmit it")


# ----------------------------------------------------------------------------------------- job records


def _records_path(out: Path) -> Path:
    return out / "slurm" / "jobs.json"


def read_records(out: Path) -> dict[str, dict]:
    from kdprune.io import read_json

    p = _records_path(out)
    try:
        return read_json(p) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_records(out: Path, records: dict[str, dict]) -> None:
    from kdprune.io import write_json

    write_json(_records_path(out), records)


def job_state(out: Path, rec: dict) -> str:
    """The scheduler's state of a recorded job (Slurm's names; for the local executor RUNNING/FINISHED/LOST)."""
    if rec.get("cluster") == "local":
        folder = out / "slurm"
        if (folder / f"{rec['job']}_0_result.pkl").exists():
            return "FINISHED"
        try:
            os.kill(int(rec["job"]), 0)
            return "RUNNING"
        except (OSError, ValueError):
            return "LOST"
    try:
        return _submitit().SlurmJob(out / "slurm", rec["job"]).state.split()[0].upper()
    except Exception:  # sacct not reachable from here: count it as running rather than submit it twice
        return "UNREACHABLE"


def _log_path(out: Path, rec: dict) -> Path:
    job = rec["job"]
    return out / "slurm" / f"{job}_0_log.err"


# ----------------------------------------------------------------------------------------- the submitter


def _job_name(out: Path, phase: int) -> str:
    return f"kdprune-{out.name}-{_PHASES[phase][0]}"


def _dependency(job_ids: list[str]) -> str | None:
    arrays = sorted({j.split("_")[0] for j in job_ids})
    return "afterok:" + ":".join(arrays) if arrays else None


def _executor(out: Path, opts: SlurmOptions, name: str, dependency: str | None):
    submitit = _submitit()
    folder = out / "slurm"
    if opts.cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.requeues)
        ex.update_parameters(**local_parameters(opts))
        return ex
    _check_scheduler(opts)
    try:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.requeues)
    except RuntimeError as e:
        raise UserError(f"--launcher slurm: {first_line(e)}") from None
    ex.update_parameters(**sbatch_parameters(opts, name, dependency))
    return ex


def _check_scheduler(opts: SlurmOptions) -> None:
    import shutil

    if opts.cluster == "slurm" and not shutil.which("sbatch"):
        raise UserError("--launcher slurm: sbatch is not on PATH (run on a Slurm login node, or "
                        "--slurm-cluster local to try the path on this machine)")


class Submitter:
    """Submits the phases, records the jobs, waits, and is the only writer of ``OUT/results.sqlite``."""

    def __init__(self, out: Path, configs: list[RunConfig], opts: SlurmOptions, log=print):
        self.out, self.opts, self.log = out, opts, log
        self.items = plan(out, configs)
        self.records = read_records(out)
        self.jobs: dict[str, Any] = {}
        self.failed: list[str] = []

    def is_done(self, item: Item) -> bool:
        return item.done_file(self.out).is_file()

    def active(self, item: Item) -> bool:
        rec = self.records.get(item.key)
        return rec is not None and job_state(self.out, rec) in _ACTIVE

    def submit_phase(self, phase: int, items: list[Item], after: list[str]) -> list[tuple[Item, Any]]:
        ex = _executor(self.out, self.opts, _job_name(self.out, phase), _dependency(after))
        job = SweepJob(self.out, os.getcwd(), self.opts.cpus)
        with ex.batch():
            handles = [ex.submit(job, item) for item in items]
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        for item, h in zip(items, handles):
            self.records[item.key] = {"job": str(h.job_id), "cluster": self.opts.cluster, "phase": phase,
                                      "submitted": now}
            self.jobs[item.key] = h
        _write_records(self.out, self.records)
        return list(zip(items, handles))

    def record(self, item: Item) -> int:
        from kdprune.experiments.store import add_run

        return add_run(self.out / "results.sqlite", item.cfg.out, wal=False) if item.stage == "run" else 0

    def finished(self, item: Item, handle) -> None:
        if self.is_done(item):
            n = self.record(item)
            extra = f": {n} new results" if item.stage == "run" else ""
            self.log(f"done   {item.label()}{extra}")
            return
        err = handle.exception()
        why = first_line(err) if err is not None else "the job ended without finishing"
        why = why.replace("Job (task=0) failed during processing with trace:", "").strip() or why
        self.failed.append(item.key)
        self.log(f"FAILED {item.label()}: {_last_error_line(Path(handle.paths.stderr)) or why}; "
                 f"log: {handle.paths.stderr}")

    def wait(self, pairs: list[tuple[Item, Any]]) -> None:
        pending = list(pairs)
        while pending:
            still = []
            for item, h in pending:
                if h.done():
                    self.finished(item, h)
                else:
                    still.append((item, h))
            pending = still
            if pending:
                time.sleep(self.opts.poll)


def _last_error_line(log: Path) -> str | None:
    """The exception line of a Python traceback in a job's log (what failed, in one line)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        s = line.strip()
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:", s) and "submitit" not in s:
            return re.sub(r"^[\w.]*\.(\w+): ", r"\1: ", s)  # kdprune.errors.UserError: ... -> UserError: ...
    return None


def run_cluster(path: str | Path, opts: SlurmOptions, wait: bool = True, log=print) -> tuple[list[dict], int]:
    """Submit what is not done (and not queued or running), then by default wait and fill the store.

    Returns the store's rows and the number of failed jobs."""
    from kdprune.experiments.store import all_rows
    from kdprune.experiments.sweep import load_sweep

    out, configs = load_sweep(path)
    _submitit()
    _check_scheduler(opts)
    if opts.cluster == "local" and not wait:
        raise UserError("--no-wait needs a scheduler: with --slurm-cluster local the jobs run under this process")
    out.mkdir(parents=True, exist_ok=True)
    sub = Submitter(out, configs, opts, log)
    runs = [i for i in sub.items if i.stage == "run"]
    todo = [i for i in sub.items if not sub.is_done(i)]
    active = [i for i in todo if sub.active(i)]
    log(f"{len(runs)} runs: {sum(sub.is_done(i) for i in runs)} done, "
        f"{sum(i.stage == 'run' for i in active)} queued or running, "
        f"{sum(i.stage == 'run' for i in todo) - sum(i.stage == 'run' for i in active)} to submit; "
        f"{len(sub.items) - len(runs)} shared stages ({sum(sub.is_done(i) for i in sub.items if i.stage != 'run')} done)")
    for i in runs:  # finished before (e.g. the submitter stopped waiting): into the store now
        if sub.is_done(i):
            sub.record(i)
    after: list[str] = [sub.records[i.key]["job"] for i in active]
    phases = [(p, [i for i in todo if i.phase == p and i not in active]) for p in (1, 2, 3)]
    for phase, items in phases:
        if not items:
            continue
        if opts.cluster == "local":  # no scheduler to hold dependents: run each phase to its end, in waves
            for k in range(0, len(items), opts.array_parallelism):
                wave = items[k:k + opts.array_parallelism]
                sub.wait(sub.submit_phase(phase, wave, []))
            continue
        pairs = sub.submit_phase(phase, items, after)
        array = pairs[0][1].job_id.split("_")[0]
        dep = f" after {_dependency(after)}" if after else ""
        log(f"phase {phase}: submitted array {array} ({len(items)} job{'s' * (len(items) > 1)}){dep}; "
            f"logs in {out / 'slurm'}")
        after += [h.job_id for _, h in pairs]
    if opts.cluster != "local":
        if not wait:
            log(f"not waiting: `kdprune sweep {path} --status` shows progress, `--collect` fills {out}/results.sqlite")
            return [], 0
        pending = [(i, sub.jobs.get(i.key) or _handle(out, sub.records[i.key])) for i in todo]
        log(f"waiting for {len(pending)} jobs (Ctrl-C stops waiting, not the jobs)")
        try:
            sub.wait(pending)
        except KeyboardInterrupt:
            log(f"stopped waiting; the jobs go on: `kdprune sweep {path} --status`, then `--collect`")
            raise SystemExit(130) from None
    rows = all_rows(out / "results.sqlite", wal=False)
    left = [i for i in runs if not sub.is_done(i)]
    log(f"{len(rows)} results in {out / 'results.sqlite'}" + (
        f"; {len(sub.failed)} job{'s' * (len(sub.failed) > 1)} failed (logs above), {len(left)} "
        f"run{'s' * (len(left) != 1)} not done: "
        "run the sweep again to resubmit only those" if sub.failed or left else ""))
    return rows, len(sub.failed)


def _handle(out: Path, rec: dict):
    return _submitit().SlurmJob(out / "slurm", rec["job"])


def dry_run(path: str | Path, opts: SlurmOptions, log=print) -> None:
    from kdprune.experiments.sweep import load_sweep

    out, configs = load_sweep(path)
    _submitit()
    items = [i for i in plan(out, configs) if not i.done_file(out).is_file()]
    log(f"--launcher slurm ({opts.cluster}): {len(items)} jobs to submit, in {out / 'slurm'}")
    for phase, (_, what) in _PHASES.items():
        n = sum(i.phase == phase for i in items)
        if n:
            dep = " (after the phases before it)" if phase > 1 else ""
            log(f"  phase {phase}: one array of {n} job{'s' * (n > 1)}: {what}{dep}")
    log(f"each job: {tasks_per_run(opts)} task{'s' * (tasks_per_run(opts) > 1)}, {opts.gpus} GPU"
        f"{'s' * (opts.gpus != 1)}, {opts.cpus} CPUs per task, time limit {minutes(opts.time)} min, "
        f"requeued up to {opts.requeues} times")
    last = max((i.phase for i in items), default=0)
    if last:
        count = sum(i.phase == last for i in items)
        dep = "afterok:<the arrays before>" if last > 1 else None
        log(f"sbatch file of phase {last}:")
        log(sbatch_script(opts, out / "slurm", _job_name(out, last), count, dep).rstrip())


def collect(path: str | Path, log=print) -> list[dict]:
    """Rebuild ``OUT/results.sqlite`` from the finished run folders (written beside it, then renamed in)."""
    from kdprune.experiments.store import add_run, all_rows
    from kdprune.experiments.sweep import load_sweep, status

    out, configs = load_sweep(path, check_files=False)  # reads results: no teacher file needed
    done = [c for c in configs if status(c) == "done"]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".results.sqlite.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        for cfg in done:
            add_run(tmp, cfg.out, wal=False)
        if not done:
            all_rows(tmp, wal=False)  # an empty store of the current layout
        store = out / "results.sqlite"
        os.replace(tmp, store)
        for side in ("-wal", "-shm", "-journal"):
            out.joinpath("results.sqlite" + side).unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
    rows = all_rows(store, wal=False)
    log(f"{len(rows)} results from {len(done)} finished runs ({len(configs) - len(done)} not finished) -> {store}")
    return rows


def sweep_status(path: str | Path, log=print) -> dict[str, int]:
    """done / running / failed / to do for every run, from the run folders and the recorded jobs."""
    from kdprune.experiments.sweep import load_sweep

    out, configs = load_sweep(path, check_files=False)  # reads folders: no teacher file needed
    records = read_records(out)
    counts = {"done": 0, "running": 0, "failed": 0, "to do": 0}
    lines = []
    items = plan(out, configs)
    for item in items:
        if item.done_file(out).is_file():
            state, detail = "done", ""
        else:
            rec = records.get(item.key)
            js = job_state(out, rec) if rec else None
            if js in _ACTIVE:
                state, detail = "running", f"job {rec['job']} {js.lower()}"
            elif rec:
                state, detail = "failed", f"job {rec['job']} {js.lower()}; log: {_log_path(out, rec)}"
            elif _lock_held(item.folder(out).with_suffix(".lock")):
                state, detail = "running", "by a local sweep"
            else:
                state = "to do"
                detail = "resumes from its checkpoints" if item.folder(out).exists() else ""
        if item.stage == "run":
            counts[state] += 1
        if state != "done":
            lines.append(f"  {state:8s} {item.label()}" + (f"  ({detail})" if detail else ""))
    shared = [i for i in items if i.stage != "run"]
    log(f"{out}: {len(configs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items())
        + f"; shared stages: {sum(i.done_file(out).is_file() for i in shared)} of {len(shared)} done")
    for line in lines:
        log(line)
    return counts


def _lock_held(path: Path) -> bool:
    """A local sweep holds this run's lock (the lock of :mod:`kdprune.experiments.sweep`, not waited for)."""
    from kdprune.experiments.sweep import _lock

    if not path.exists():
        return False
    with _lock(path, wait=False) as got:
        return not got
