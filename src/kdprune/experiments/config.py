"""Typed, serialisable configs. Every field is a CLI flag (``--field-name``) and a YAML key.

Resolution order: dataclass defaults < ``--config FILE.yaml`` < flags given on the command line. A YAML
key that is not a field, or a value of the wrong type, is a user error (one line, exit code 2).
The defaults are sized for the embedded ``digits`` dataset on a 2-core CPU; ``configs/`` holds the
paper-scale settings.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kdprune.choices import (
    COLT_HEADS,
    DEFAULT_ALPHA,
    KD_LOSSES,
    LATENCY_RUNTIMES,
    KD_STDS,
    OPTIMIZERS,
    RETRAIN,
    RETRAIN_SCHEDULES,
    SCHEDULES,
    SCOPED_RECIPES,
    SCOPES,
    SCORE_FORMS,
    SCORE_NORMS,
    STAGES,
    STRUCTURES,
)
from kdprune.errors import UserError, check_choice


ALL_STAGES = STAGES  # the option determines every shared stage (teacher, KD student, dense CE student)
TEACHER_STAGES = ("teacher", "student")  # the teacher, and the student trained under it
STUDENT_STAGES = ("student", "dense-ce")  # the students (KD and dense CE), not the teacher


def _f(default, help: str, **kw):
    """One option, declared once: its type (the annotation), ``default``, ``help``, and in ``kw`` what
    everything else reads: ``choices`` (a tuple of :mod:`kdprune.choices`) or a range (``ge``, ``gt``, ``le``,
    ``lt``) that validation checks; ``used_by``, the recipes that read it (``--help`` says so; with
    ``neutral`` it is left out of the other recipes' run hashes); ``stages``, the shared stages whose identity
    it is part of (the sweep's stage keys); ``neutral``, the value that behaves as before the option existed
    (left out of run hashes, so adding an option renames no run)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class CommonConfig:
    """data and training"""

    dataset: str | None = _f(None, "digits (embedded) | cifar10 | cifar100 | tinyimagenet | folder (DIR/train/<class>/*, "
                                   "DIR/test/<class>/*); default: digits, or what --data-dir holds", stages=ALL_STAGES)
    data_dir: str | None = _f(None, "folder holding the dataset (its official folder or the parent)", stages=ALL_STAGES)
    download: bool = _f(False, "download and checksum the official archive into --data-dir first", stages=ALL_STAGES)
    image_size: int | None = _f(None, "resize every image to this size once at load (area averaging), e.g. 16 for "
                                      "a CPU-sized CIFAR; default: the dataset's own", neutral=None, ge=4, le=1024,
                                stages=ALL_STAGES)
    batch_size: int = _f(64, "mini-batch size", gt=0, stages=ALL_STAGES)
    lr: float = _f(0.1, "peak learning rate of dense/teacher/student training", ge=0, stages=ALL_STAGES)
    optimizer: str = _f("sgd", "sgd | adamw", choices=OPTIMIZERS, stages=ALL_STAGES)
    momentum: float = _f(0.9, "SGD momentum", ge=0, stages=ALL_STAGES)
    nesterov: bool = _f(True, "Nesterov momentum for SGD", stages=ALL_STAGES)
    weight_decay: float = _f(5e-4, "weight decay (L2 for SGD, decoupled for AdamW)", ge=0, stages=ALL_STAGES)
    schedule: str = _f("cosine", "learning-rate schedule: cosine | multistep | constant", choices=SCHEDULES,
                       stages=ALL_STAGES)
    grad_clip: float | None = _f(None, "clip the gradient norm to this value", stages=ALL_STAGES)
    seed: int = _f(0, "seed of initialisation, data order and augmentation", stages=ALL_STAGES)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = _f(True, "mixed precision on CUDA (bf16 where supported); ignored on the CPU", stages=ALL_STAGES)
    channels_last: bool = _f(True, "channels_last memory format for weights and batches: measured 1.28-1.37x faster "
                                   "training on CPU, PyTorch's advice for CNNs on CUDA; --no-channels-last keeps NCHW "
                                   "(a resumed run keeps the format it recorded)", stages=ALL_STAGES)
    compile: bool = _f(False, "torch.compile the training step (off: on CPU its warm-up outweighs its gain over "
                              "channels_last for runs shorter than about 7 minutes per stage, see docs/getting-started.md)")
    out: str = _f("runs/default", "output folder")
    resume: bool = _f(False, "continue the run in --out: finished stages are kept, an interrupted one resumes")
    progress: bool | None = _f(None, "progress bars (default: only on a terminal)")


@dataclass
class TrainConfig(CommonConfig):
    """``kdprune train``: dense training with cross-entropy."""

    arch: str = _f("resnet20", "architecture (see `kdprune models`)")
    epochs: int = _f(15, "training epochs", ge=0)
    out: str = _f("runs/train", "output folder")


@dataclass
class DistillConfig:
    """distillation: L_total = alpha*KD + (1-alpha)*CE (the KD student, KD retraining, teacher-guided scores)"""

    alpha: float = _f(DEFAULT_ALPHA, "weight of the distillation term: L = alpha*KD + (1-alpha)*CE", ge=0, le=1,
                      stages=("student",))
    temperature: float = _f(4.0, "distillation temperature T", gt=0, stages=("student",))
    kd_loss: str = _f("ca-kld", "ca-kld (z-scored logits, the paper's) | kd (Hinton)", choices=KD_LOSSES,
                      stages=("student",))
    kd_eps: float = _f(1e-7, "epsilon of the CA-KLD logit normalisation", stages=("student",))
    kd_t_squared: bool = _f(True, "multiply the KD term by T^2 as in Hinton et al.", stages=("student",))
    kd_std: str = _f("population", "CA-KLD logit standardisation: population std (the formula's) | sample "
                     "(N-1, as the logit-standardisation reference code)", neutral="population", choices=KD_STDS,
                     stages=("student",))


@dataclass
class PruneOptions:
    """pruning: the method, its scores and the masks (one global threshold, the paper's; collapse guards)"""

    method: str = _f("teacher-guided", "pruning method (`kdprune methods`; `prune` takes its criterion)")
    scope: str = _f("global", "global: one threshold over all layers (the paper's) | layerwise: the same fraction of "
                              "every layer | erk: Erdos-Renyi-kernel layer budgets | magnitude-budget: each layer keeps "
                              "as many as global magnitude pruning leaves it; the scores choose which", choices=SCOPES,
                    used_by=SCOPED_RECIPES)
    score_batches: int | None = _f(None, "batches summed for gradient scores (default: one epoch, at most 100)", gt=0)
    score_form: str = _f("taylor", "gradient score: taylor |w*g| | grad |g| | taylor2 (w*g)^2", choices=SCORE_FORMS)
    prune_first: bool = _f(True, "prune the first convolution")
    prune_last: bool = _f(True, "prune the classifier")
    score_rounds: int = _f(1, "progressive scoring: reach each sparsity in R score->mask steps on an exponential "
                              "schedule, re-scoring the masked student (1 = the paper's one-shot)", neutral=1, ge=1,
                           used_by=("post-training",))
    layer_floor: float = _f(0.0, "keep at least this fraction of every layer (0 = none, the paper's)", neutral=0.0,
                            ge=0, lt=1, used_by=("post-training", "epsd"))
    score_norm: str = _f("none", "per-layer score normalisation before the global threshold: none (the paper's) | "
                                 "l2 | mean", neutral="none", choices=SCORE_NORMS, used_by=("post-training", "epsd"))


@dataclass
class ChannelOptions:
    """channel pruning (--structure channel): whole channels removed, a smaller dense model"""

    structure: str = _f("unstructured", "unstructured (single weights, the paper's) | channel (whole channels, "
                                        "Torch-Pruning surgery: a smaller, faster dense model)", neutral="unstructured",
                        choices=STRUCTURES)
    target_macs: str | None = _f(None, "channel: shrink the MACs by this factor, e.g. 2x (run: a comma list, 2x,4x)",
                                 neutral=None, used_by=("channel",))
    target_params: float | None = _f(None, "channel: remove this fraction of the parameters instead", neutral=None,
                                     used_by=("channel",))
    channel_floor: float = _f(0.1, "channel: every dependency group keeps at least this fraction of its channels",
                              neutral=0.1, ge=0, lt=1, used_by=("channel",))
    channel_round: int = _f(1, "channel: every group keeps a multiple of this many channels (e.g. 8; faster "
                               "kernels); 1 = no rounding", neutral=1, ge=1, used_by=("channel",))
    channel_prune_stem: bool = _f(False, "channel: let the stem conv's output channels (the first stage's stream: "
                                         "thin layers at full resolution, where much of a CPU's time goes) be pruned "
                                         "too; off keeps them whole", neutral=False, used_by=("channel",))
    target_latency: str | None = _f(None, "channel: make the model this many times faster as measured on this "
                                          "machine in --latency-runtime, e.g. 2x (run: a comma list, 2x,3x)",
                                    neutral=None, used_by=("channel",))
    latency_runtime: str = _f("onnxruntime", "channel: where latency is measured: onnxruntime (CPU serving, what "
                                             "`kdprune export --format onnx` ships; needs kdprune[export]) | torch "
                                             "(eager, channels_last)", neutral="onnxruntime", choices=LATENCY_RUNTIMES,
                              used_by=("channel",))
    latency_batch: int = _f(64, "channel: the batch latency is measured at (64: the compute that channel pruning "
                                "removes; at batch 1 a small CIFAR network's CPU time is mostly per-layer overhead)",
                            neutral=64, ge=1, used_by=("channel",))


@dataclass
class CriterionOptions:
    """criteria of pruning at initialisation"""

    synflow_iterations: int = _f(100, "SynFlow: pruning rounds (exponential schedule)", gt=0, used_by=("at-init",))
    grasp_temperature: float = _f(200.0, "GraSP: logits are divided by this before the loss", used_by=("at-init",))


@dataclass
class PruneConfig(CommonConfig, DistillConfig, CriterionOptions, ChannelOptions, PruneOptions):
    """``kdprune prune``: one-shot pruning of an existing checkpoint, no retraining."""

    checkpoint: str | None = _f(None, "model to prune: model.safetensors, checkpoint.pt, a .pt state_dict or a run folder")
    arch: str = _f("resnet20", "architecture of --checkpoint")
    sparsity: float = _f(0.9, "fraction of prunable weights to remove, in (0, 1)")
    teacher_checkpoint: str | None = _f(None, "teacher for --method teacher-guided")
    teacher_arch: str = _f("resnet32", "architecture of --teacher-checkpoint")
    out: str = _f("runs/prune", "output folder")


@dataclass
class IMPOptions:
    """iterative pruning: IMP (Lottery Ticket with rewinding) and COLT"""

    rate: float = _f(0.2, "IMP: fraction of the remaining weights pruned per round", gt=0, lt=1,
                     used_by=("imp", "colt"))
    rounds: int | None = _f(None, "IMP: rounds to reach the highest sparsity (sets the rate; default: from --rate)",
                            gt=0, used_by=("imp",))
    rewind_epoch: int = _f(1, "IMP: rewind surviving weights to this epoch of dense training (0 = init, as in LTH)",
                           stages=("dense-ce",), used_by=("imp",))
    imp_reinit: bool = _f(False, "IMP control: random re-initialisation instead of rewinding", used_by=("imp",))
    colt_partitions: int = _f(2, "COLT: class-partitioned tickets per round", ge=2, used_by=("colt",))
    colt_heads: str = _f("own", "COLT: own (each ticket its own C/P-class head, as the reference code) | shared "
                                "(one C-class head pruned by intersection, kdprune's earlier reading)", neutral="shared",
                         choices=COLT_HEADS, used_by=("colt",))


@dataclass
class EPSDOptions:
    """early pruning with self-distillation (EPSD, Simple, EPG)"""

    epsd_warmup_epochs: int = _f(1, "EPSD/Simple: dense epochs with the self-distillation loss before pruning",
                                 used_by=("epsd",))


@dataclass
class RunConfig(CommonConfig, DistillConfig, CriterionOptions, IMPOptions, EPSDOptions, ChannelOptions, PruneOptions):
    """``kdprune run``: teacher -> KD student -> one-shot pruning at each sparsity -> retraining."""

    arch: str = _f("resnet20", "student architecture", stages=STUDENT_STAGES)
    teacher_arch: str = _f("resnet32", "teacher architecture", stages=TEACHER_STAGES)
    teacher_checkpoint: str | None = _f(None, "use this trained teacher instead of training one", stages=TEACHER_STAGES)
    teacher_seed: int | None = _f(None, "seed of the teacher's training (default: --seed); one value over a sweep "
                                        "of seeds trains one teacher that every seed shares", neutral=None,
                                  stages=("student",))
    student_checkpoint: str | None = _f(None, "start the student from these weights (default: random init)",
                                        stages=("student",))
    teacher_epochs: int = _f(15, "teacher training epochs (when no --teacher-checkpoint)", ge=0, stages=TEACHER_STAGES)
    student_epochs: int = _f(15, "student distillation epochs", ge=0, stages=STUDENT_STAGES)
    retrain_epochs: int = _f(6, "sparsity-aware retraining epochs (the retraining budget)", ge=0)
    retrain_schedule: str = _f(
        "restart", "retraining learning rate: finetune (--retrain-lr decayed by --schedule over the retraining) | "
        "lr-rewind (the last --retrain-epochs of the training schedule: peak --lr over --student-epochs, Renda et "
        "al. 2020) | restart (the training schedule from peak --lr, compressed into the retraining)",
        neutral="finetune", choices=RETRAIN_SCHEDULES)
    retrain_lr: float = _f(0.01, "peak learning rate of retraining with --retrain-schedule finetune", ge=0)
    sparsity: list[float] = _f([0.5, 0.75, 0.9, 0.95, 0.98], "comma list of target sparsities, each in (0, 1)")
    retrain: str = _f("both", "plain (CE) | kd (L_total) | both", choices=RETRAIN)
    channel_twin: bool = _f(False, "channel: also prune the same student unstructured (same importance, one global "
                                   "threshold) to the channel model's parameter count and retrain it the same way "
                                   "(rows 'unstructured, same params')", neutral=False, used_by=("channel",))
    out: str = _f("runs/default", "output folder")


_GROUP_ORDER = [CommonConfig, DistillConfig, PruneOptions, ChannelOptions, CriterionOptions, IMPOptions, EPSDOptions]
_OWN_TITLES = {TrainConfig: "the model", PruneConfig: "the model to prune, its teacher and the sparsity",
               RunConfig: "the run: student, teacher, sparsities and retraining"}


def stage_keys(stage: str, cls=None) -> tuple[str, ...]:
    """The options that determine a shared stage (its folder's hash in a sweep): those declared with it in
    ``stages``."""
    return tuple(f_.name for f_ in fields(cls or RunConfig) if stage in f_.metadata.get("stages", ()))


# ------------------------------------------------------------------------------------- type handling

def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def coerce(tp, value: Any, key: str) -> Any:
    """Check/convert ``value`` to the field type ``tp``; a wrong type is a UserError naming ``key``."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise UserError(f"{key}: a value is required")
    try:
        if typing.get_origin(base) is list:
            (inner,) = typing.get_args(base)
            items = value.split(",") if isinstance(value, str) else value
            if isinstance(items, (int, float)):
                items = [items]
            if not isinstance(items, (list, tuple)) or not items:
                raise ValueError
            return [coerce(inner, v.strip() if isinstance(v, str) else v, key) for v in items]
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (ValueError, TypeError, OverflowError):
        pass
    name = getattr(base, "__name__", str(base)).replace("list", "list of numbers")
    raise UserError(f"{key}: expected {name}, got {value!r}")


def _bounds_error(name: str, v, md: dict) -> str | None:
    """The declared range's message for ``v``, or None when it lies inside (``must be positive``, ``must not be
    negative``, ``must be at least N``, ``must lie in [a, b)``, ``must lie strictly between a and b``)."""
    ge, gt, le, lt = (md.get(k) for k in ("ge", "gt", "le", "lt"))
    ok = ((ge is None or v >= ge) and (gt is None or v > gt) and (le is None or v <= le) and (lt is None or v < lt))
    if ok:
        return None
    lo, hi = (ge if ge is not None else gt), (le if le is not None else lt)
    if hi is None:
        what = ("must be positive" if gt == 0 else "must not be negative" if ge == 0 else
                f"must be at least {ge}" if ge is not None else f"must be above {gt}")
    elif gt is not None and lt is not None:
        what = f"must lie strictly between {lo:g} and {hi:g}"
    else:
        what = f"must lie in {'[' if ge is not None else '('}{lo:g}, {hi:g}{']' if le is not None else ')'}"
    return f"{name}: {what}, got {v}"


def _validate(cfg, check_files: bool = True) -> None:
    """Every declared check (finite numbers, ``choices``, ranges), then the checks between options."""
    for f_ in fields(cfg):
        v, md = getattr(cfg, f_.name), f_.metadata
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{f_.name}: must be a finite number, got {v}")
        if v is None:
            continue
        if "choices" in md:
            check_choice(f_.name, v, md["choices"])
        if not isinstance(v, bool) and isinstance(v, (int, float)):
            msg = _bounds_error(f_.name, v, md)
            if msg:
                raise UserError(msg)
    if getattr(cfg, "structure", "unstructured") == "channel":
        _validate_channel(cfg)
    elif getattr(cfg, "channel_twin", False):
        raise UserError("--channel-twin goes with --structure channel")
    sp = getattr(cfg, "sparsity", None)
    for s in (sp if isinstance(sp, list) else [] if sp is None else [sp]):
        if not 0.0 < s < 1.0:
            raise UserError(f"sparsity must lie strictly between 0 and 1, got {s}")
    if isinstance(sp, list) and len(set(sp)) != len(sp):
        raise UserError(f"sparsity: values repeat in {sp}")
    if hasattr(cfg, "scope"):
        from kdprune.pruning.threshold import MaskOptions, check_rounds

        MaskOptions.of(cfg).check()
        check_rounds(cfg.scope, _mask_rounds(cfg))
    _validate_names_and_files(cfg, check_files)


def _validate_channel(cfg) -> None:
    from kdprune.pruning.structured import STRUCTURED_CRITERIA, channel_criterion, parse_macs_target

    from kdprune.pruning.latency import parse_factor

    if sum(t is not None for t in (cfg.target_macs, cfg.target_params, cfg.target_latency)) != 1:
        raise UserError("--structure channel needs exactly one target: --target-macs (e.g. 2x), --target-params or "
                        "--target-latency (e.g. 2x)")
    for name, parse in (("target_macs", parse_macs_target), ("target_latency", parse_factor)):
        if getattr(cfg, name) is not None:
            targets = str(getattr(cfg, name)).split(",")
            if len(targets) > 1 and not hasattr(cfg, "rate"):
                raise UserError(f"prune takes one --{name.replace('_', '-')}; `kdprune run` takes a comma list")
            for t in targets:
                parse(t)
    if cfg.target_latency is not None and cfg.latency_runtime == "onnxruntime":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            from kdprune.deploy.runtimes import ORT_INSTALL_HINT

            raise UserError(ORT_INSTALL_HINT)
    if cfg.target_params is not None and not 0.0 < cfg.target_params < 1.0:
        raise UserError(f"target_params: a fraction of the parameters to remove in (0, 1), got {cfg.target_params}")
    from kdprune.methods import METHODS
    from kdprune.methods.registry import POST

    if getattr(cfg, "channel_twin", False) and getattr(METHODS.get(cfg.method), "recipe", None) is not POST:
        raise UserError(f"--channel-twin needs an unstructured criterion of the same name: --method teacher-guided, "
                        f"magnitude or random, got {cfg.method!r}")
    if channel_criterion(cfg.method) not in STRUCTURED_CRITERIA:
        raise UserError(f"--structure channel takes --method {', '.join(('magnitude',) + STRUCTURED_CRITERIA)}, "
                        f"got {cfg.method!r}")


def _validate_names_and_files(cfg, check_files: bool = True) -> None:
    """Unknown names and missing files are reported before any work starts."""
    from kdprune.data.datasets import DATASETS
    from kdprune.models import model_info
    from kdprune.pruning.criteria import get_criterion

    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    for k in ("arch", "teacher_arch"):
        if hasattr(cfg, k):
            model_info(getattr(cfg, k))
    if hasattr(cfg, "rate"):  # RunConfig: a method; PruneConfig: a criterion
        from kdprune.methods import get_method, method_or_structured

        if getattr(cfg, "structure", "unstructured") == "unstructured":  # channel: checked above
            get_method(cfg.method)
        if cfg.rewind_epoch < 0 or (reads(cfg, "rewind_epoch") and cfg.rewind_epoch > cfg.student_epochs):
            raise UserError(f"rewind_epoch: must lie in [0, student_epochs={cfg.student_epochs}], got {cfg.rewind_epoch}")
        stages = method_or_structured(cfg).recipe.stages(cfg)
        if cfg.student_checkpoint and "student" not in stages:
            raise UserError(f"--student-checkpoint starts the KD student, which {cfg.method} does not use (it "
                            f"trains its own dense student from initialisation): drop it, or use a method that "
                            f"prunes the KD student (e.g. teacher-guided, magnitude)")
    elif hasattr(cfg, "method") and getattr(cfg, "structure", "unstructured") == "unstructured":
        get_criterion(cfg.method)
    for k in ("checkpoint", "teacher_checkpoint", "student_checkpoint") if check_files else ():
        path = getattr(cfg, k, None)
        if path and not Path(path).exists():
            raise UserError(f"checkpoint not found: {path} (--{k.replace('_', '-')})")


def yaml_error(path, e: Exception) -> UserError:
    """``FILE:LINE:COLUMN: not valid YAML: <the parser's problem> (<its context>)``, one line."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    cmark = getattr(e, "context_mark", None)
    if context and cmark is not None:
        context = f"{context} at line {cmark.line + 1}"
    return UserError(f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else ""))


_ANNOUNCED: set[tuple[str, str]] = set()  # (data_dir, dataset) said once per process (a sweep builds many configs)


def _shown(path: str) -> str:
    return path if path.isprintable() else repr(path)


def detect_dataset(root: Path) -> list[str]:
    """The datasets that the folder ``root`` holds (itself or as its parent): their official markers, or
    else a ``train/`` folder with class subfolders (``--dataset folder``)."""
    def has(*parts) -> bool:
        return (root.joinpath(*parts)).is_file()

    found = []
    if has("cifar-10-batches-py", "test_batch") or has("test_batch"):
        found.append("cifar10")
    if (has("cifar-100-python", "test") and has("cifar-100-python", "meta")) or (has("test") and has("meta")):
        found.append("cifar100")
    if has("tiny-imagenet-200", "wnids.txt") or has("wnids.txt"):
        found.append("tinyimagenet")
    if not found and (root / "train").is_dir():
        if any(d.is_dir() and not d.name.startswith(".") for d in (root / "train").iterdir()):
            found.append("folder")
    return found


def resolve_dataset(cfg):
    """``cfg`` with ``dataset`` set: digits without ``--data-dir``, else what ``--data-dir`` holds (said on
    stderr). The resolved name is the one a user would have passed, so run hashes do not change."""
    import dataclasses
    import sys

    if cfg.dataset == "digits" and cfg.data_dir:
        raise UserError("digits is embedded and reads no --data-dir; pass --dataset cifar10|cifar100|tinyimagenet|folder")
    if cfg.dataset is not None:
        return cfg
    if not cfg.data_dir:
        return dataclasses.replace(cfg, dataset="digits")
    root = Path(cfg.data_dir)
    try:
        exists = root.exists()
    except (OSError, ValueError):  # a name the file system cannot hold
        exists = False
    hint = " (to download, pass --dataset too)" if getattr(cfg, "download", False) else ""
    if not exists:
        raise UserError(f"--data-dir {_shown(cfg.data_dir)} does not exist{hint}")
    if not root.is_dir():
        raise UserError(f"--data-dir {_shown(cfg.data_dir)} is a file; it names the folder holding the dataset")
    try:
        found = detect_dataset(root)
    except OSError as e:
        raise UserError(f"cannot read --data-dir {_shown(cfg.data_dir)}: {e.strerror or e}") from None
    if len(found) != 1:
        what = f"holds {' and '.join(found)}" if found else (
            "holds no cifar-10-batches-py/, cifar-100-python/, tiny-imagenet-200/ or train/<class>/ folder")
        raise UserError(f"cannot tell the dataset: --data-dir {_shown(cfg.data_dir)} {what}; pass --dataset "
                        f"cifar10|cifar100|tinyimagenet|folder{hint}")
    from kdprune import distributed

    if (cfg.data_dir, found[0]) not in _ANNOUNCED and distributed.rank() == 0:
        _ANNOUNCED.add((cfg.data_dir, found[0]))
        print(f"kdprune: --data-dir {_shown(cfg.data_dir)} holds {found[0]}: using --dataset {found[0]}",
              file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, dataset=found[0])


def build_config(cls, overrides: dict[str, Any], config_file: str | None = None, check_files: bool = True):
    """Defaults, then the YAML file, then ``overrides`` (already-parsed CLI values); ``check_files=False``
    leaves out the checks that the checkpoints named exist (reading a finished sweep's runs needs none)."""
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read config file {path}: {e}") from None
        except yaml.YAMLError as e:
            raise yaml_error(path, e) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of option: value at the top level")
        for raw_key, v in loaded.items():
            key = str(raw_key).replace("-", "_")
            if key not in types_:
                raise UserError(f"{path}: unknown key {raw_key!r} (see --help for the options)")
            values[key] = coerce(types_[key], v, f"{path}: {raw_key}")
    for k, v in overrides.items():
        if k not in types_:
            raise UserError(f"unknown option --{k.replace('_', '-')} (see --help for the options)")
        values[k] = coerce(types_[k], v, "--" + k.replace("_", "-"))
    cfg = resolve_dataset(cls(**values))
    _validate(cfg, check_files)
    return cfg


def to_dict(cfg) -> dict:
    return asdict(cfg)


def _mask_rounds(cfg) -> int:
    """How many times a run thresholds scores into nested masks on the way to one sparsity: 1, or more for
    progressive scoring, the iterative recipes (IMP, COLT) and an iterative criterion (SynFlow)."""
    from kdprune.methods import METHODS, method_or_structured
    from kdprune.pruning.criteria import CRITERIA

    if getattr(cfg, "method", "") not in METHODS:
        return 1
    method = method_or_structured(cfg)
    criterion = CRITERIA.get(method.criterion)
    if method.recipe.iterative or (criterion is not None and criterion.iterative):
        return 2
    return getattr(cfg, "score_rounds", 1)


def reads(cfg, option: str) -> bool:
    """Whether the run's recipe reads ``option`` (its declared ``used_by``; an option without one is read by all)."""
    return _read_by(cfg, next(f_ for f_ in fields(cfg) if f_.name == option))


def _read_by(cfg, f_) -> bool:
    used_by = f_.metadata.get("used_by")
    return used_by is None or _recipe(cfg) in used_by


def _recipe(cfg) -> str | None:
    """The name of the recipe the run's method (and structure) runs, or None for an unknown method."""
    from kdprune.methods import METHODS, method_or_structured

    if getattr(cfg, "method", "") not in METHODS and getattr(cfg, "structure", "unstructured") != "channel":
        return None
    return method_or_structured(cfg).recipe.name


def neutral_values(cfg) -> dict:
    """``{field: neutral value}`` for the options added after runs existed (see :func:`identity`)."""
    return {f_.name: f_.metadata["neutral"] for f_ in fields(cfg) if "neutral" in f_.metadata}


def identity(cfg, keys=None) -> dict:
    """The fields that identify a run (or, with ``keys``, a shared stage) for hashing. An option added after
    runs existed declares ``neutral``, the value that behaves as before it existed; it is left out while it
    holds that value, so adding an option never renames existing runs: an old sweep still finds and resumes
    them (and a changed default is still hashed)."""
    out = {}
    for f_ in fields(cfg):
        if keys is not None and f_.name not in keys:
            continue
        v = getattr(cfg, f_.name)
        if "neutral" in f_.metadata and v == f_.metadata["neutral"]:
            continue
        if "neutral" in f_.metadata and not _read_by(cfg, f_):
            continue  # an option added later that this run's recipe does not read does not identify it
        out[f_.name] = v
    return out


def _declared_in(cls) -> dict[str, type]:
    """field name -> the class of ``cls``'s MRO that declares it (its ``--help`` group)."""
    out = {}
    for klass in reversed(cls.__mro__):
        for name in vars(klass).get("__annotations__", {}):
            out[name] = klass
    return out


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "", grouped: bool = False) -> None:
    """One flag per field (``--PREFIXfield-name``); values stay raw strings and are typed by :func:`build_config`.
    ``grouped``: one ``--help`` section per option group (the dataclass that declares it, titled by its
    docstring), and each option says which recipes read it."""
    types_ = _field_types(cls)
    owner = _declared_in(cls)
    groups: dict[type, argparse._ActionsContainer] = {}
    if grouped:  # the command's own options, then the shared groups in the pipeline's order
        for klass in sorted(set(owner.values()), key=lambda k: (k is not cls, _GROUP_ORDER.index(k) if k in _GROUP_ORDER
                                                                else len(_GROUP_ORDER))):
            doc = (klass.__doc__ or "").strip().splitlines()[0]
            groups[klass] = parser.add_argument_group(_OWN_TITLES.get(klass, doc))
    for f_ in fields(cls):
        flag = "--" + prefix + f_.name.replace("_", "-")
        base, _ = _unwrap_optional(types_[f_.name])
        default = f_.default if f_.default is not MISSING else f_.default_factory()  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        used = f" [{', '.join(f_.metadata['used_by'])}]" if "used_by" in f_.metadata else ""
        help_ = f"{f_.metadata.get('help', '')}{used} (default: {shown})"
        target = groups[owner[f_.name]] if grouped else parser
        if base is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            target.add_argument(flag, default=argparse.SUPPRESS, metavar=f_.name.upper(), help=help_)
