"""What every recipe shares: the run's config, data and folder, the shared stages and the bookkeeping.

:class:`Stages` trains the shared stages lazily and once (the teacher, the KD student of the paper's step 2,
and a dense CE student for the recipes that start from one). A :class:`RunContext` holds them and the
run's :class:`~kdprune.methods.registry.Method`; it retrains a pruned copy under its masks in a resumable
folder and records one :class:`~kdprune.methods.result.ResultRow` per (sparsity, regime) with its
:class:`~kdprune.methods.result.Cost`. A recipe (``kdprune.methods.teacher_guided``, ``at_init``, ``imp``,
``colt``, ``epsd``, ``structured``) is a function of a context.
``cfg`` is any object with the ``RunConfig`` fields (``kdprune.experiments.config``); nothing here
imports ``kdprune.experiments``, which orchestrates runs on top of this.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import torch

from kdprune.choices import DEFAULT_ALPHA, SCOPED_RECIPES
from kdprune.distributed import all_gather_object, barrier, synced
from kdprune.errors import UserError
from kdprune.io import append_jsonl, read_json, save_tensors, write_json, write_yaml
from kdprune.losses import CrossEntropy, Distillation
from kdprune.methods.recipe import DENSE_CE, STUDENT, TEACHER
from kdprune.methods.result import Cost, ResultRow
from kdprune.models import create_model
from kdprune.models.weights import load_weights
from kdprune.pruning.criteria import score_batch_count
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.prunable import unwrap
from kdprune.pruning.threshold import MaskOptions, prune_masks
from kdprune.train import Callback, evaluate
from kdprune.train.engine import OptimSpec
from kdprune.train.layout import set_layout
from kdprune.train.stage import Env, is_finished, optim_spec, run_training_stage


def result_key(row: dict) -> tuple:
    return (row["method"], row["dataset"], row["arch"], row["seed"], float(row["target_sparsity"]), row["regime"],
            row.get("variant") or "")


def config_dict(cfg) -> dict:
    return asdict(cfg) if is_dataclass(cfg) else dict(vars(cfg))


def build_model(arch: str, env: Env, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, env.data.num_classes, env.data.in_channels).to(env.device)
    return set_layout(model, env.train.channels_last)


def distillation(cfg) -> Distillation:
    return Distillation(cfg.alpha, cfg.temperature, cfg.kd_loss, cfg.kd_eps, cfg.kd_t_squared, std=cfg.kd_std)


def describe_compute(env: Env) -> str:
    """``"cpu, 2 threads"`` or ``"cuda:0"``: where a command trains, for its first line."""
    if env.device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu, {n} thread{'s' * (n > 1)} (--threads to change)"
    return str(env.device) + (f" x {env.world_size} processes" if env.world_size > 1 else "")


def log(env: Env, msg: str) -> None:
    if env.is_main:
        print(msg, file=sys.stderr, flush=True)


def threshold_masks(cfg, scores, sparsity: float, weights: dict | None = None) -> MaskSet:
    """Step 4 with the run's options: ``--scope`` (and the collapse guards ``--layer-floor``, ``--score-norm``).
    ``weights``: the dense weights being pruned (:func:`~kdprune.pruning.threshold.weights_of`), which
    ``--scope magnitude-budget`` reads."""
    return MaskSet(prune_masks(scores, sparsity, MaskOptions.of(cfg, weights)))


def retrain_spec(cfg) -> OptimSpec:
    """The optimiser of post-training retraining, by ``--retrain-schedule``: ``finetune`` (``--retrain-lr``
    decayed by ``--schedule`` over the retraining), ``restart`` (the training schedule from peak ``--lr``,
    compressed into the retraining; Le & Hua 2021) or ``lr-rewind`` (the rates of the last
    ``--retrain-epochs`` of the ``--student-epochs`` training schedule; Renda et al. 2020)."""
    kind = getattr(cfg, "retrain_schedule", "finetune")
    if kind == "finetune":
        return optim_spec(cfg, cfg.retrain_lr)
    spec = optim_spec(cfg, cfg.lr)
    if kind == "lr-rewind" and cfg.student_epochs > 0:
        spec.start_fraction = max(0.0, 1.0 - cfg.retrain_epochs / cfg.student_epochs)
    return spec


def variant(cfg) -> str:
    """What a post-training row did beyond the paper's one-shot step: its retraining schedule and the
    collapse guards, e.g. ``"restart, progressive R=20"`` (empty for the other recipes)."""
    parts = [getattr(cfg, "retrain_schedule", "finetune")]
    if getattr(cfg, "score_rounds", 1) > 1:
        parts.append(f"progressive R={cfg.score_rounds}")
    return ", ".join(p for p in (*parts, guards_variant(cfg), alpha_variant(cfg)) if p)


def guards_variant(cfg) -> str:
    """The collapse guards a row's masks were built with, e.g. ``"floor 0.02, l2-norm"`` (empty without)."""
    parts = []
    if getattr(cfg, "layer_floor", 0.0) > 0:
        parts.append(f"floor {cfg.layer_floor:g}")
    if getattr(cfg, "score_norm", "none") != "none":
        parts.append(f"{cfg.score_norm}-norm")
    return ", ".join(parts)


def alpha_variant(cfg) -> str:
    """``"alpha 0.5"`` where ``L_total``'s weight is not the paper's (empty at the default)."""
    alpha = getattr(cfg, "alpha", DEFAULT_ALPHA)
    return "" if alpha == DEFAULT_ALPHA else f"alpha {alpha:g}"


def sparsity_dir(out: Path, s: float) -> Path:
    return out / f"sparsity-{s:g}"


class SaveRewindPoint(Callback):
    """Saves the weights after epoch ``rewind_epoch`` of dense training (0 is handled before training)."""

    def __init__(self, path: Path, rewind_epoch: int):
        self.path, self.rewind_epoch = path, rewind_epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch + 1 == self.rewind_epoch and trainer.is_main:
            save_tensors(self.path, unwrap(trainer.model).state_dict())


@dataclass
class Stages:
    """The shared stages of a run, each trained (or loaded) once, on first use, in its own folder of ``out``."""

    cfg: object  # a RunConfig
    env: Env
    out: Path
    callbacks: tuple = ()
    _done: dict = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return self.env.data.num_classes

    def model(self, arch: str | None = None, seed_offset: int = 1) -> torch.nn.Module:
        return build_model(arch or self.cfg.arch, self.env, self.cfg.seed + seed_offset)

    def folder(self, stage: str) -> Path:
        """Where a stage trains (and a sweep links its shared copy): ``out/<stage name>``."""
        return self.out / stage

    def get(self, stage: str) -> tuple[torch.nn.Module, dict]:
        """A stage by name (:mod:`kdprune.methods.recipe`'s TEACHER, STUDENT, DENSE_CE)."""
        return {TEACHER: self.teacher, STUDENT: self.kd_student, DENSE_CE: self.dense_ce}[stage]()

    def teacher(self) -> tuple[torch.nn.Module, dict]:
        """The teacher (loaded or trained once) and its metrics."""
        if TEACHER not in self._done:
            cfg, env = self.cfg, self.env
            seed = cfg.seed if getattr(cfg, "teacher_seed", None) is None else cfg.teacher_seed
            teacher = build_model(cfg.teacher_arch, env, seed)
            if cfg.teacher_checkpoint:
                load_weights(teacher, cfg.teacher_checkpoint, cfg.teacher_arch, self.nc)
                m = {"top1": evaluate(teacher, env.test, cfg.amp)["top1"]}
            else:
                m = run_training_stage(self.folder(TEACHER), teacher, CrossEntropy(), optim_spec(cfg),
                                       cfg.teacher_epochs, env.with_train_seed(seed) if seed != cfg.seed else env,
                                       cfg, desc=f"teacher {cfg.teacher_arch}",
                                       callbacks=self.callbacks, extra={"arch": cfg.teacher_arch})
            teacher.eval().requires_grad_(False)
            log(env, f"teacher {cfg.teacher_arch}: top-1 {m['top1']:.2f}%")
            self._done[TEACHER] = (teacher, m)
        return self._done[TEACHER]

    def kd_student(self) -> tuple[torch.nn.Module, dict]:
        """The dense student trained under the teacher with L_total (the paper's step 2)."""
        if STUDENT not in self._done:
            cfg = self.cfg
            teacher, _ = self.teacher()
            student = self.model()
            if cfg.student_checkpoint:
                load_weights(student, cfg.student_checkpoint, cfg.arch, self.nc)
            m = run_training_stage(self.folder(STUDENT), student, distillation(cfg), optim_spec(cfg),
                                   cfg.student_epochs, self.env, cfg, desc=f"student {cfg.arch} (KD)",
                                   teacher=teacher, callbacks=self.callbacks, extra={"arch": cfg.arch})
            log(self.env, f"student {cfg.arch} ({cfg.kd_loss}, alpha={cfg.alpha}, T={cfg.temperature}): "
                           f"top-1 {m['top1']:.2f}%")
            self._done[STUDENT] = (student, m)
        return self._done[STUDENT]

    @property
    def rewind_file(self) -> Path:
        """The dense CE student's weights after epoch ``rewind_epoch`` (IMP and COLT rewind to them)."""
        return self.folder(DENSE_CE) / f"rewind-epoch{self.cfg.rewind_epoch}.safetensors"

    def dense_ce(self) -> tuple[torch.nn.Module, dict]:
        """A dense student trained with plain CE from the same initialisation (IMP's round 0).

        The stage always keeps its rewind point, so a dense stage trained for one method (or shared by a
        sweep) serves IMP too; only a stage trained for fewer epochs than ``rewind_epoch`` has none (IMP's
        validation refuses that pair, the other recipes do not read it).
        """
        if DENSE_CE not in self._done:
            cfg = self.cfg
            student = self.model()
            if cfg.rewind_epoch == 0 and self.env.is_main and not self.rewind_file.exists():
                save_tensors(self.rewind_file, student.state_dict())
            barrier()
            m = run_training_stage(self.folder(DENSE_CE), student, CrossEntropy(), optim_spec(cfg),
                                   cfg.student_epochs, self.env, cfg, desc=f"dense {cfg.arch} (CE)",
                                   callbacks=(*self.callbacks, SaveRewindPoint(self.rewind_file, cfg.rewind_epoch)),
                                   extra={"arch": cfg.arch})
            if cfg.rewind_epoch <= cfg.student_epochs and not synced(self.rewind_file.is_file):
                raise UserError(f"{self.out / 'dense-ce'} was trained without its epoch-{cfg.rewind_epoch} rewind "
                                "point; delete that folder to retrain it")
            log(self.env, f"dense {cfg.arch} (CE): top-1 {m['top1']:.2f}%")
            self._done[DENSE_CE] = (student, m)
        return self._done[DENSE_CE]


@dataclass
class RunContext:
    """What every recipe shares: config, data, output folder, the run's method, the shared stages, the rows."""

    cfg: object  # a RunConfig
    env: Env
    out: Path
    method: object  # a kdprune.methods.registry.Method
    callbacks: tuple = ()
    regimes: list[str] = field(default_factory=list)
    done: set = field(default_factory=set)  # result keys already in results.jsonl (a resumed run)
    rows: list[dict] = field(default_factory=list)
    stages: Stages | None = None

    def __post_init__(self):
        if self.stages is None:
            self.stages = Stages(self.cfg, self.env, self.out, self.callbacks)

    @property
    def nc(self) -> int:
        return self.env.data.num_classes

    def model(self, arch: str | None = None, seed_offset: int = 1) -> torch.nn.Module:
        return self.stages.model(arch, seed_offset)

    def objective(self, regime: str):
        return distillation(self.cfg) if regime == "kd" else CrossEntropy()

    def teacher_for(self, regime: str):
        return self.stages.teacher()[0] if regime == "kd" else None

    def teacher_counts(self, regime: str) -> bool:
        """Whether the teacher's training is part of a row's cost: always for a recipe whose student learns
        from it, else in the kd regime only."""
        return self.method.recipe.pays_for_teacher or regime == "kd"

    def teacher_cost(self, regime: str) -> Cost:
        """The teacher's training, where it counts in this regime (nothing for a given checkpoint)."""
        return Cost.of(self.stages.teacher()[1]) if self.teacher_counts(regime) else Cost()

    def pruned_top1(self, sdir: Path, model: torch.nn.Module, masks: MaskSet, params: list[str],
                    name: str = "pruned.json") -> dict:
        """Top-1 of ``model`` with ``masks`` applied, before any training; every rank must agree on the mask."""
        f = sdir / name
        if synced(f.is_file):
            return read_json(f)
        masks.bind(model).apply_()
        per_rank = all_gather_object(masks.digest())
        if len(set(per_rank)) != 1:
            raise RuntimeError(f"ranks built different masks in {sdir}: {per_rank}")
        r = {"top1": evaluate(model, self.env.test, self.cfg.amp)["top1"],
             "achieved_sparsity": sparsity_report(model, params)["sparsity"], "mask_sha256_per_rank": per_rank}
        if self.env.is_main:
            write_json(f, r)
        barrier()
        return r

    def record(self, s: float, regime: str, m: dict, pruned_top1: float, cost: Cost, rdir: Path, *,
               scoring_batches: int = 0, variant: str = "", **extra) -> None:
        """One result: the retrained model's metrics ``m`` at level ``s`` in ``regime``, with everything that
        led to it (``cost``). The dense reference and the teacher's share come from the recipe."""
        cfg, stages = self.cfg, self.stages
        counts = self.teacher_counts(regime)
        teacher_m = stages.teacher()[1] if counts else None
        dense_top1 = stages.get(self.method.recipe.reference_stage(regime))[1]["top1"]
        scope = getattr(cfg, "scope", "global")
        if scope != "global" and self.method.recipe.name in SCOPED_RECIPES and extra.get("structure") != "channel":
            variant = ", ".join(p for p in (variant, f"{scope} scope") if p)  # per-layer budgets, not the paper's
        row = ResultRow(
            dataset=cfg.dataset, arch=cfg.arch, teacher_arch=cfg.teacher_arch, method=cfg.method, regime=regime,
            variant=variant, seed=cfg.seed, target_sparsity=s, achieved_sparsity=m["sparsity"]["sparsity"],
            top1=m["top1"], pruned_top1=pruned_top1, dense_top1=dense_top1,
            teacher_top1=teacher_m["top1"] if counts else None, epochs=m["epochs"], total_epochs=cost.epochs,
            images_fwd_bwd=cost.images_fwd_bwd, teacher_forwards=cost.teacher_forwards,
            scoring_batches=scoring_batches, wall_seconds=m["wall_seconds"], total_wall_seconds=cost.wall_seconds,
            nonzero_params=m["sparsity"]["nonzero_params"], total_params=m["sparsity"]["total_params"],
            teacher_images_fwd_bwd=int(teacher_m.get("images_fwd_bwd", 0)) if counts else 0, out=str(rdir),
            hardware=" + ".join(cost.hardware) or None, **extra).to_dict()
        self.rows.append(row)
        if self.env.is_main and result_key(row) not in self.done:
            append_jsonl(self.out / "results.jsonl", row)
            self.done.add(result_key(row))
        log(self.env, f"sparsity {s:g} {regime}: top-1 {m['top1']:.2f}% (dense {dense_top1:.2f}%)")

    def retrain(self, rdir: Path, s: float, regime: str, state: dict, masks: MaskSet, epochs: int, lr: float | OptimSpec,
                desc: str) -> tuple[dict, torch.nn.Module]:
        """Train a copy of ``state`` under ``masks`` in ``rdir`` at peak ``lr`` (or with the optimiser ``lr``
        describes); returns (metrics, trained model)."""
        model = self.model(seed_offset=2)
        model.load_state_dict(state)
        if self.env.is_main and not is_finished(rdir):
            write_yaml(rdir / "config.yaml", {**config_dict(self.cfg), "target_sparsity": s, "regime": regime})
        spec = lr if isinstance(lr, OptimSpec) else optim_spec(self.cfg, lr)
        m = run_training_stage(rdir, model, self.objective(regime), spec, epochs, self.env,
                               self.cfg, desc=desc, masks=masks, teacher=self.teacher_for(regime),
                               callbacks=self.callbacks, extra={"target_sparsity": s, "regime": regime})
        return m, model


def score_batches(cfg, env: Env) -> int:
    return score_batch_count(cfg.score_batches, len(env.train))


def criterion_kwargs(criterion, cfg, env: Env, teacher) -> dict:
    """The options ``criterion``'s ``score``/``masks_for`` takes, from the run's config."""
    d = env.data
    return criterion.select(dict(
        objective=distillation(cfg), teacher=teacher, seed=cfg.seed, form=cfg.score_form,
        num_batches=score_batches(cfg, env), input_shape=(d.in_channels, d.image_size, d.image_size),
        synflow_iterations=cfg.synflow_iterations, grasp_temperature=cfg.grasp_temperature))
