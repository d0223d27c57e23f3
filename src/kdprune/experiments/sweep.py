"""``kdprune sweep CONFIG.yaml``: the grid methods x sparsities x seeds x datasets x archs.

The YAML file has ``out`` (the sweep folder), ``grid`` (lists of values for any ``kdprune run`` option,
e.g. method, seed, dataset, arch) and ``base`` (fixed options; ``sparsity`` is a list and stays inside one
run). Every grid point is one run in ``OUT/runs/<hash>``, the hash of its resolved config: a finished run
(its ``metrics.json`` exists) is skipped, an interrupted one resumes. The teacher, the KD-trained student
and the dense CE student are trained once per setting that determines them, in ``OUT/shared/``, and
hard-linked into every run that needs them (so each run's compute accounting still counts them). Each
run's rows go into ``OUT/results.sqlite`` (see :mod:`kdprune.experiments.store`). One worker takes the runs in
the file's order and trains each shared stage when a run first needs it, so a sweep stopped part-way leaves the
first grid entries finished, not every teacher trained and no run. ``--jobs N`` runs N worker processes (one GPU
each, round-robin, where there are GPUs); they train the shared stages first, teachers then students, then the
runs. ``--dry-run`` prints the plan and its estimated cost.

Under ``torchrun --nproc_per_node N -m kdprune sweep`` every run trains with DDP on N processes, one run
after another: rank 0 takes the file locks, decides what is finished and writes the store; the other
ranks follow its decisions (broadcast), so all ranks walk the same plan.
"""

from __future__ import annotations

import hashlib
import itertools
from contextlib import contextmanager
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import yaml

from kdprune import distributed
from kdprune.distributed import barrier, synced
from kdprune.errors import UserError
from kdprune.choices import STAGES
from kdprune.experiments.config import RunConfig, build_config, identity, stage_keys, yaml_error
from kdprune.experiments.store import add_rows, add_run, all_rows, readable, set_aside
from kdprune.io import file_lock
from kdprune.methods.registry import method_or_structured

_NOT_HASHED = {"out", "resume", "progress", "device"}
_STAGE_KEYS = {stage: stage_keys(stage) for stage in STAGES}  # from each option's declared ``stages``
_TEACHER = _STAGE_KEYS["teacher"]


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_spec(path: str | Path):
    """The sweep file's YAML, as it is (a missing or malformed file is one line)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {path}") from None
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None


def load_sweep(path: str | Path, check_files: bool = True) -> tuple[Path, list[RunConfig]]:
    """The sweep file's output folder and its runs' configs (each ``out`` its run folder); ``check_files=False``
    does not ask that the checkpoints it names exist (to find a finished sweep's runs)."""
    path = Path(path)
    spec = read_spec(path)
    if not isinstance(spec, dict) or set(spec) - {"out", "grid", "base", "launcher", "slurm"}:
        raise UserError(f"{path}: expected the keys out, grid and base (and launcher, slurm)")
    grids, base = spec.get("grid") or {}, spec.get("base") or {}
    grids = grids if isinstance(grids, list) else [grids]  # a list of grids is their union
    for grid in grids:
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise UserError(f"{path}: grid must map options to non-empty lists of values (or be a list of such)")
    if not isinstance(base, dict):
        raise UserError(f"{path}: base must map options to values")
    out = Path(spec.get("out") or "runs/sweep")
    configs = []
    points = [dict(zip(g, values)) for g in grids for values in itertools.product(*g.values())]
    for grid_point in points:
        point = {**{k.replace("-", "_"): v for k, v in base.items()},
                 **{k.replace("-", "_"): v for k, v in grid_point.items()}}
        cfg = build_config(RunConfig, point, check_files=check_files)
        run_id = _hash({k: v for k, v in identity(cfg).items() if k not in _NOT_HASHED})
        configs.append(replace(cfg, out=str(out / "runs" / run_id), progress=False))
    return out, configs


def run_id(cfg: RunConfig) -> str:
    return Path(cfg.out).name


def teacher_is_shared(cfg: RunConfig) -> bool:
    """A teacher given by ``teacher_checkpoint`` is no shared stage: nothing trains it, each stage that needs it
    loads the file."""
    return not cfg.teacher_checkpoint


def _shared_stages(cfg: RunConfig) -> list[tuple[str, tuple]]:
    """(stage, the options that determine it) for each shared stage the run's recipe needs."""
    return [(stage, _STAGE_KEYS[stage]) for stage in method_or_structured(cfg).recipe.stages(cfg)
            if stage != "teacher" or teacher_is_shared(cfg)]


def _shared_dir(out: Path, cfg: RunConfig, stage: str, keys: tuple) -> Path:
    ident = identity(cfg, keys)
    if stage == "teacher" and cfg.teacher_seed is not None:  # one teacher for every seed of the sweep
        ident["seed"] = cfg.teacher_seed
    return out / "shared" / f"{stage}-{_hash(ident)}"


@contextmanager
def _lock(path: Path, wait: bool):
    """An exclusive advisory lock on ``path`` (yields False when ``wait`` is off and another holds it).

    Under torchrun rank 0 holds it for all ranks, and every rank yields rank 0's answer.
    """
    if distributed.rank() != 0:
        yield synced(lambda: None)
        return
    with file_lock(path, wait) as got:
        synced(lambda: got)
        yield got


def _train_shared(out: Path, cfg: RunConfig, stage: str, keys: tuple) -> None:
    """Train one shared stage in its own folder (a RunContext whose out is that folder), once."""
    sdir = _shared_dir(out, cfg, stage, keys)
    with _lock(sdir.with_name(sdir.name + ".lock"), wait=True):
        _train_shared_locked(out, cfg, stage, keys, sdir)


def _train_shared_locked(out: Path, cfg: RunConfig, stage: str, keys: tuple, sdir: Path) -> None:
    from kdprune.methods.context import Stages
    from kdprune.train.stage import make_env

    if synced((sdir / stage / "metrics.json").is_file):
        return
    if stage == "student" and teacher_is_shared(cfg):  # the student needs its teacher: link the shared one in
        _link_stage(_shared_dir(out, cfg, "teacher", _TEACHER) / "teacher", sdir / "teacher")
    Stages(replace(cfg, out=str(sdir)), make_env(cfg), sdir).get(stage)


def _link_stage(src: Path, dst: Path) -> None:
    if distributed.rank() == 0:
        _link_stage_files(src, dst)
    barrier()


def _link_stage_files(src: Path, dst: Path) -> None:
    if (dst / "metrics.json").is_file() or not (src / "metrics.json").is_file():
        return
    tmp = dst.with_name(dst.name + ".linking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def status(cfg: RunConfig) -> str:
    out = Path(cfg.out)
    if (out / "metrics.json").is_file():
        return "done"
    return "partial" if out.exists() else "new"


def estimate(cfg: RunConfig, n_train: int | None = None) -> dict:
    """Training epochs (and images when the training-set size is known) the run will cost, by recipe."""
    epochs = method_or_structured(cfg).recipe.epochs(cfg)
    return {"epochs": epochs, "images": epochs * n_train if n_train else None}


def _run_one(cfg: RunConfig, out: Path) -> int:
    """Run one grid point (unless another process holds it); returns the number of new store rows."""
    from kdprune.experiments.pipeline import run_pipeline

    with _lock(Path(cfg.out).with_suffix(".lock"), wait=False) as mine:
        if not mine:
            return 0  # another sweep process is running it and will record its rows
        for stage, keys in _shared_stages(cfg):
            _train_shared(out, cfg, stage, keys)
            _link_stage(_shared_dir(out, cfg, stage, keys) / stage, Path(cfg.out) / stage)
        rows = run_pipeline(replace(cfg, resume=True))
        return add_rows(out / "results.sqlite", run_id(cfg), rows) if distributed.rank() == 0 else 0


def _clean_finished(done: list[RunConfig], log) -> None:
    """Remove what a killed writer left (``.*.tmp``) in finished runs no other process holds: resuming
    cleans the runs it continues, and nothing else would ever visit these. Every rank calls it (the
    lock is collective under torchrun); rank 0 deletes."""
    from kdprune.io import remove_stale_temps

    n = 0
    for cfg in done:
        with _lock(Path(cfg.out).with_suffix(".lock"), wait=False) as mine:
            if mine and distributed.rank() == 0:
                n += remove_stale_temps(cfg.out, recursive=True)
    if n:
        log(f"removed {n} temporary file{'s' * (n > 1)} that killed writers left in finished runs")


def _run_or_fail(cfg: RunConfig, out: Path) -> tuple[int, str | None]:
    """``(new store rows, None)``, or ``(0, the one-line error)`` when the run stops on a UserError found
    while it runs (e.g. a latency target out of reach as measured): that run fails, the sweep goes on."""
    try:
        return _run_one(cfg, out), None
    except UserError as e:
        return 0, str(e)


def _worker(args) -> tuple[str, int, str | None]:
    import torch

    cfg, out, threads = args
    torch.set_num_threads(threads)
    return (run_id(cfg), *_run_or_fail(cfg, out))


def gpu_plan(jobs: int, n_gpus: int) -> list[int]:
    """The GPU of each of ``jobs`` workers: round-robin, so N workers on N GPUs get one each."""
    return [i % n_gpus for i in range(jobs)] if n_gpus else []


def _init_worker(gpus) -> None:
    """Pin this worker to one GPU before anything touches CUDA (each worker takes one id off the queue)."""
    import queue

    if gpus is None:  # no GPUs
        return
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get(timeout=5))
    except queue.Empty:
        pass


def _shared_worker(args) -> None:
    import torch

    out, cfg, stage, keys, threads = args
    torch.set_num_threads(threads)
    _train_shared(out, cfg, stage, keys)


def _quiet(_msg: str) -> None:
    pass


def _check_recorded_layout(path, out: Path, configs: list[RunConfig]) -> None:
    """A sweep whose YAML leaves ``channels_last`` to the default, in a folder of runs made under another
    default, would train its remaining grid points in another memory format beside the finished ones (new run
    hashes, so the finished ones would look undone). Refuse, and say which line keeps the sweep whole."""
    spec = read_spec(path)
    grids = spec.get("grid") or {}
    given = set(spec.get("base") or {}) | {k for g in (grids if isinstance(grids, list) else [grids]) for k in g}
    if {"channels_last", "channels-last"} & given or not configs:
        return
    planned = configs[0].channels_last
    for saved in sorted((out / "runs").glob("*/config.yaml")):
        try:
            recorded = (yaml.safe_load(saved.read_text()) or {}).get("channels_last", planned)
        except (OSError, yaml.YAMLError):
            continue
        if recorded != planned:
            word = str(recorded).lower()
            raise UserError(f"{out} holds runs made with channels_last: {word} (the default then); add "
                            f"'channels_last: {word}' to base in {path} to finish this sweep in that format, or "
                            f"'channels_last: {str(planned).lower()}' to start new runs beside them")


def run_sweep(path: str | Path, jobs: int = 1, dry_run: bool = False, log=print, threads: int | None = None,
              failed: list | None = None) -> list[dict]:
    """Run (or resume) every grid point of ``path``; ``threads`` is the total over the ``jobs`` workers
    (default: the idle cores, :mod:`kdprune.threads`). A run that stops on a UserError is one ``FAILED`` line
    and the others go on; ``failed`` (a list) receives ``(run id, message)`` for each."""
    failed = [] if failed is None else failed
    out, configs = load_sweep(path)
    _check_recorded_layout(path, out, configs)
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if distributed.is_distributed():
        if jobs != 1:
            raise UserError("under torchrun every run uses all processes: drop --jobs")
        if distributed.rank() != 0:
            log = _quiet
    if dry_run:
        from kdprune.data import load_dataset

        sizes = {}
        total = 0
        log(f"{len(configs)} runs in {out}/runs:")
        for cfg in configs:
            if cfg.dataset not in sizes:
                try:
                    sizes[cfg.dataset] = len(load_dataset(cfg.dataset, cfg.data_dir).train_y)
                except UserError:
                    sizes[cfg.dataset] = None
            est = estimate(cfg, sizes[cfg.dataset])
            total += est["epochs"]
            imgs = f", ~{est['images']:,} images" if est["images"] else ""
            log(f"  {run_id(cfg)}  {status(cfg):8s} {cfg.method:15s} {cfg.dataset:12s} {cfg.arch:9s} seed {cfg.seed}"
                f"  ~{est['epochs']} epochs{imgs}")
        log(f"estimated at most {total} training epochs before sharing teachers and students across runs")
        return []
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.sqlite"
    if distributed.rank() == 0 and not readable(store):
        moved = set_aside(store)
        log(f"{store} is not a results store this version reads (moved to {moved.name}); rebuilding it from the runs' "
            "results.jsonl")
    barrier()
    shared = {}
    for cfg in configs:
        for stage, keys in _shared_stages(cfg):
            d = _shared_dir(out, cfg, stage, keys)
            shared.setdefault((stage, d), cfg)
    todo = synced(lambda: [c for c in configs if status(c) != "done"])
    _clean_finished([c for c in configs if c not in todo], log)
    log(f"{len(configs)} runs: {len(configs) - len(todo)} done, {len(todo)} to run; {len(shared)} shared stages")
    from kdprune.threads import choose_threads

    threads = max(1, choose_threads(threads) // jobs)
    log(f"{jobs} worker{'s' * (jobs > 1)}, {threads} CPU thread{'s' * (threads > 1)} each")
    if jobs == 1:  # each run trains the shared stages it needs on first use, so the runs of one grid entry finish
        for cfg in todo:  # before the next entry's teacher starts: a stopped sweep leaves whole entries
            n, error = _run_or_fail(cfg, out)
            if error:
                failed.append((run_id(cfg), error))
                log(f"run {run_id(cfg)} ({cfg.method}, seed {cfg.seed}): FAILED: {error}")
            else:
                log(f"run {run_id(cfg)} ({cfg.method}, seed {cfg.seed}): {n} new results")
    else:
        import multiprocessing as mp

        import torch

        ctx = mp.get_context("spawn")
        gpus = ctx.Queue()
        plan = gpu_plan(jobs, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        for g in plan:
            gpus.put(g)
        if plan:
            log(f"{jobs} workers on GPUs {plan}")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(gpus if plan else None,)) as pool:
            # workers train the shared stages first, phase by phase, so that none waits idle on another's lock
            for phase in ("teacher", "dense-ce", "student"):
                pool.map(_shared_worker, [(out, cfg, stage, dict(_shared_stages(cfg))[stage], threads)
                                          for (stage, d), cfg in shared.items() if stage == phase])
            for rid, n, error in pool.imap_unordered(_worker, [(cfg, out, threads) for cfg in todo]):
                if error:
                    failed.append((rid, error))
                log(f"run {rid}: FAILED: {error}" if error else f"run {rid}: {n} new results")
    # runs finished earlier but missing from the store (e.g. killed between finishing and recording)
    for cfg in configs:
        if distributed.rank() == 0 and status(cfg) == "done":
            add_run(out / "results.sqlite", cfg.out)
    barrier()
    rows = all_rows(out / "results.sqlite")
    log(f"{len(rows)} results in {out / 'results.sqlite'}; `kdprune report {out}/runs --out REPORT` for tables")
    if failed:
        log(f"{len(failed)} run{'s' * (len(failed) > 1)} failed: " + "; ".join(f"{rid}: {e}" for rid, e in failed))
    return rows
