"""``kdprune`` command line: train, prune, run, models, methods.

Every user mistake (bad flag, bad file, bad value) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from kdprune import __version__
from kdprune.choices import LATENCY_RUNTIMES
from kdprune.errors import UserError

_COMMANDS = {
    "train": ("TrainConfig", "train a dense model with cross-entropy"),
    "prune": ("PruneConfig", "one-shot prune an existing checkpoint (no retraining)"),
    "run": ("RunConfig", "the whole pipeline: teacher, KD student, one-shot pruning, retraining"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage by default)
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from kdprune.experiments import config as C

    p = _Parser(prog="kdprune", description="Teacher-guided one-shot pruning with context-aware KD.")
    p.add_argument("--version", action="version", version=f"kdprune {__version__}")
    threads_help = ("CPU threads for torch (default: OMP_NUM_THREADS, else the cores idle at start; "
                    "results are bit-for-bit reproducible for a given count)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help=threads_help)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (cls_name, help_) in _COMMANDS.items():
        cls = getattr(C, cls_name)
        sp = sub.add_parser(name, help=help_, description=(cls.__doc__ or help_).strip(),
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sp.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of options (keys as the flags, with - or _); flags override it")
        C.add_arguments(sp, cls, grouped=True)
    ex = sub.add_parser("export", help="write a pruned model as dense, compressed sparse or ONNX")
    ex.add_argument("run", metavar="RUN", help="a run folder (holding model.safetensors) or a weights file")
    ex.add_argument("--format", choices=["dense", "sparse", "onnx"], required=True,
                    help="dense: plain state_dict; sparse: bitmask/COO + values; onnx: checked by onnxruntime")
    ex.add_argument("--output", default=None, help="output file (default: next to the weights)")
    ex.add_argument("--arch", default=None, help="architecture, when RUN does not say")
    ex.add_argument("--fp16", action="store_true", help="sparse: store values as float16")
    ex.add_argument("--image-size", type=int, default=None, help="onnx: input height/width, when RUN does not say")
    ins = sub.add_parser("inspect", help="per-layer and global sparsity, parameters, compression, non-zero MACs")
    ins.add_argument("run", metavar="RUN_OR_FILE", help="a run folder, model.safetensors or a sparse export")
    ins.add_argument("--arch", default=None, help="architecture, when the file does not say")
    ins.add_argument("--image-size", type=int, default=None, help="input size for MACs, when the file does not say")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")
    sw = sub.add_parser("sweep", help="run a grid of methods x seeds x datasets x archs from a YAML file")
    sw.add_argument("sweep", metavar="CONFIG.yaml", help="keys: out, grid (lists of option values), base (options)")
    sw.add_argument("--jobs", type=int, default=None,
                    help="local: worker processes (default 1; under torchrun each run uses all ranks)")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the plan and its estimated cost (slurm: and the sbatch file), run nothing")
    sw.add_argument("--launcher", choices=["local", "slurm"], default=None,
                    help="local: worker processes on this machine; slurm: job arrays through submitit "
                         "(default: the YAML's launcher, else local)")
    sw.add_argument("--no-wait", action="store_true",
                    help="slurm: submit and return (default: wait, filling OUT/results.sqlite as runs finish)")
    sw.add_argument("--status", action="store_true", help="done / running / failed / to do, per run, and stop")
    sw.add_argument("--collect", action="store_true",
                    help="rebuild OUT/results.sqlite from the finished run folders, and stop")
    from kdprune.experiments.cluster import SlurmOptions

    slurm = sw.add_argument_group("Slurm (--launcher slurm; also a slurm: block in the YAML, which the flags override)")
    C.add_arguments(slurm, SlurmOptions, prefix="slurm-")
    rp = sub.add_parser("report", help="tables (CSV, markdown) and plots from one or more runs")
    rp.add_argument("runs", nargs="*", metavar="RUN", help="run folders (searched for results.jsonl) or files")
    rp.add_argument("--sweep", action="append", default=[], metavar="FILE.yaml",
                    help="the runs of this sweep file only (repeatable), whatever else its folder holds: runs of "
                         "the file's earlier versions are left out")
    rp.add_argument("--out", required=True, help="folder for results.csv, results.md and the PNGs")
    rp.add_argument("--published", default=None, metavar="FILE.yaml",
                    help="published numbers to print beside ours: dataset: {method: {sparsity: top1}}")
    rp.add_argument("--latency", nargs="?", type=int, const=64, default=None, metavar="BATCH",
                    help="channel pruning: also time every pruned model against the dense one on this machine "
                         "(PyTorch eager, batch BATCH, default 64; --threads applies) and plot accuracy vs latency")
    rp.add_argument("--latency-runtime", choices=LATENCY_RUNTIMES, default="torch",
                    help="with --latency: time the models in PyTorch eager (default) or ONNX Runtime")
    rp.add_argument("--ladder", action="store_true",
                    help="the teacher-strength ladder instead: rows grouped by teacher, the teacher's effects "
                         "(KD - CE student, teacher-guided - magnitude, kd - plain) against its lead over the "
                         "dense CE student (ladder.md, ladder.csv, teacher_ladder.png)")
    rp.add_argument("--latency-nchw", action="store_true",
                    help="time the models in NCHW instead of channels_last (kdprune's default layout since 0.2)")
    sub.add_parser("models", help="list the architectures")
    sub.add_parser("methods", help="list the pruning methods")
    for sp in sub.choices.values():  # --threads also after the command (there it wins over one before it)
        sp.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N", help=threads_help)
    return p


def _list_models() -> None:
    from kdprune.models import list_models, model_info

    for name in list_models():
        print(f"{name:10s} {model_info(name).description}")


def _list_methods() -> None:
    from kdprune.methods import METHODS

    for m in METHODS.values():
        print(f"{m.name:16s} ({m.recipe.name}) {m.description}\n{'':16s} [{m.paper}]")
    print("\nwith --structure channel (whole channels, Torch-Pruning surgery): teacher-guided (group saliency of "
          "L_total), taylor-ce (the same with CE only), magnitude (group L1), l2, random")


def _deploy(args: argparse.Namespace) -> int:
    import json

    from kdprune.deploy import exporting

    if args.command == "inspect":
        r = exporting.inspect(args.run, args.arch, args.image_size)
        if r["nonfinite"]:
            print(f"kdprune: {exporting.nonfinite_warning(r['nonfinite'])}", file=sys.stderr)
        print(json.dumps(r, indent=2) if args.json else exporting.format_inspect(r), end="\n" if args.json else "")
        return 0
    r = exporting.export(args.run, args.format, args.output, args.arch, args.fp16, args.image_size)
    line = f"wrote {r['output']} ({r['bytes']:,} bytes, {r['size_ratio']:.3f} of the dense file)"
    if "onnx_max_abs_diff" in r:
        line += f"; ONNX Runtime vs PyTorch max |diff| {r['onnx_max_abs_diff']:.2e} ({r['onnx_exporter']} exporter)"
    print(line)
    return 0


def _sweep_runs(files: list[str]) -> list[str]:
    """The run folders of these sweep files that have results (a sweep's folder may also hold runs of the
    file's earlier versions)."""
    from pathlib import Path

    from kdprune.experiments.sweep import load_sweep

    found, runs = [], 0
    for f in files:
        _, cfgs = load_sweep(f, check_files=False)  # reading results needs no teacher checkpoint
        runs += len(cfgs)
        found += [c.out for c in cfgs if (Path(c.out) / "results.jsonl").is_file()]
    if files and not found:
        raise UserError(f"no results yet for any of the {runs} runs of {', '.join(files)}")
    return found


def _report(args: argparse.Namespace) -> int:
    """``kdprune report``: the runs given and those of each ``--sweep`` file; the ladder or the usual report."""
    runs = [*args.runs, *_sweep_runs(args.sweep)]
    if not runs:
        raise UserError("kdprune report: give run folders or result files, or --sweep FILE.yaml")
    if args.ladder:
        from kdprune.experiments.ladder import write_ladder

        r = write_ladder(runs, args.out)
    else:
        from kdprune.experiments.report import write_report

        if args.latency is not None:
            if args.latency < 1:
                raise UserError(f"--latency takes a batch size of at least 1, got {args.latency}")
            from kdprune.threads import set_threads

            set_threads(args.threads)
        r = write_report(runs, args.out, args.published, latency_batch=args.latency,
                         latency_channels_last=not args.latency_nchw, latency_runtime=args.latency_runtime)
    print(r["markdown"])
    print(f"{r['rows']} results -> {args.out}/: {', '.join(r['files'])}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "models":
        _list_models()
        return 0
    if args.command == "methods":
        _list_methods()
        return 0
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.command in ("export", "inspect"):
        return _deploy(args)
    if args.command == "report":
        return _report(args)
    from kdprune import distributed
    from kdprune.threads import set_threads

    set_threads(args.threads)
    distributed.init_from_env()
    try:
        return _run_command(args)
    finally:
        distributed.shutdown()


def _sweep(args: argparse.Namespace) -> int:
    from kdprune.experiments import cluster
    from kdprune.experiments.sweep import run_sweep

    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.status + args.collect + args.dry_run > 1:
        raise UserError("choose one of --status, --collect and --dry-run")
    if args.status:
        cluster.sweep_status(args.sweep, log=log)
        return 0
    if args.collect:
        cluster.collect(args.sweep, log=log)
        return 0
    launcher, block = cluster.load_launch(args.sweep)
    launcher = args.launcher or launcher or "local"
    flags = {k[len("slurm_"):]: v for k, v in vars(args).items() if k.startswith("slurm_")}
    if launcher == "local":
        if flags or args.no_wait:
            given = ["--slurm-" + k.replace("_", "-") for k in flags] + ["--no-wait"] * args.no_wait
            raise UserError(f"{given[0]} applies to --launcher slurm only")
        failed: list = []
        run_sweep(args.sweep, args.jobs or 1, args.dry_run, log=log, threads=args.threads, failed=failed)
        return 1 if failed else 0
    if args.jobs is not None:
        raise UserError("--jobs is for --launcher local; on Slurm every run is a job (see --slurm-array-parallelism)")
    opts = cluster.build_options(block, flags, source=f"{args.sweep}: slurm")
    if args.dry_run:
        run_sweep(args.sweep, 1, True, log=log)
        cluster.dry_run(args.sweep, opts, log=log)
        return 0
    _, failed = cluster.run_cluster(args.sweep, opts, wait=not args.no_wait, log=log)
    return 1 if failed else 0


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "sweep":
        return _sweep(args)
    from kdprune.experiments import config as C
    from kdprune.experiments import pipeline

    cls = getattr(C, _COMMANDS[args.command][0])
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "threads")}
    cfg = C.build_config(cls, overrides, args.config)
    if args.command == "train":
        pipeline.train_dense(cfg)
    elif args.command == "prune":
        pipeline.prune_checkpoint(cfg)
    else:
        rows = pipeline.run_pipeline(cfg)
        from kdprune import distributed
        from kdprune.experiments.results import format_table

        if distributed.rank() == 0:
            print(format_table(rows), end="")
            print(f"results: {cfg.out}/results.md, {cfg.out}/results.jsonl")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version: printed; main returns the exit code, as for every command
            return e.code if isinstance(e.code, int) else 0
        if not args.command:
            parser.print_help()
            return 2
        return _dispatch(args)
    except UserError as e:
        print(f"kdprune: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kdprune inspect --json | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("kdprune: interrupted; finished stages are kept, rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            print(f"kdprune: error: {e.strerror}: {e.filename or ''}; finished stages are kept".rstrip(),
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
