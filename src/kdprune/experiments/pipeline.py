"""The three commands as functions: ``train_dense``, ``prune_checkpoint`` and ``run_pipeline``.

``run_pipeline`` lays out ``--out`` as::

    config.yaml  metrics.json  results.jsonl  results.md  scores.safetensors
    teacher/     model.safetensors metrics.json metrics.jsonl   (absent with --teacher-checkpoint)
    student/     model.safetensors metrics.json metrics.jsonl   (the KD-trained dense student)
    sparsity-0.9/pruned.json                                    (one-shot pruned, before retraining)
    sparsity-0.9/plain/  model.safetensors masks.safetensors metrics.json config.yaml
    sparsity-0.9/kd/     ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdprune.distributed import all_gather_object, barrier, synced
from kdprune.errors import UserError
from kdprune.experiments.config import PruneConfig, RunConfig, TrainConfig, to_dict
from kdprune.experiments.results import format_table, result_key
from kdprune.experiments.stages import (
    Env,
    is_finished,
    make_env,
    optim_spec,
    prepare_out,
    run_training_stage,
)
from kdprune.io import append_jsonl, load_tensors, read_json, read_jsonl, save_tensors, write_json, write_text, write_yaml
from kdprune.losses import CrossEntropy, Distillation
from kdprune.methods import get_method
from kdprune.models import create_model
from kdprune.models.weights import load_weights
from kdprune.pruning.criteria import get_criterion
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.prunable import prunable_parameters, unwrap
from kdprune.pruning.threshold import global_masks, layerwise_masks
from kdprune.train import Callback, evaluate


def _model(arch: str, env: Env, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, env.data.num_classes, env.data.in_channels).to(env.device)


def _distillation(cfg) -> Distillation:
    return Distillation(cfg.alpha, cfg.temperature, cfg.kd_loss, cfg.kd_eps, cfg.kd_t_squared)


def _log(env: Env, msg: str) -> None:
    if env.is_main:
        import sys

        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ train

def train_dense(cfg: TrainConfig, callbacks=()) -> dict:
    env = make_env(cfg)
    out = prepare_out(cfg, "train", env.is_main)
    model = _model(cfg.arch, env, cfg.seed)
    m = run_training_stage(out, model, CrossEntropy(), optim_spec(cfg), cfg.epochs, env, cfg,
                           desc=f"train {cfg.arch}", callbacks=callbacks,
                           extra={"arch": cfg.arch, "dataset": cfg.dataset, "seed": cfg.seed})
    _log(env, f"{cfg.arch} on {cfg.dataset}: top-1 {m['top1']:.2f}% after {cfg.epochs} epochs -> {out}")
    return m


# ------------------------------------------------------------------------------------------ scoring

def _masks(cfg, scores, sparsity: float) -> MaskSet:
    fn = global_masks if cfg.scope == "global" else layerwise_masks
    return MaskSet(fn(scores, sparsity))


# ------------------------------------------------------------------------------------------ prune

def prune_checkpoint(cfg: PruneConfig) -> dict:
    if not cfg.checkpoint:
        raise UserError("prune needs --checkpoint (the model to prune)")
    crit = get_criterion(cfg.method)
    if crit.needs_teacher and not cfg.teacher_checkpoint:
        raise UserError(f"--method {cfg.method} needs --teacher-checkpoint (and --teacher-arch)")
    env = make_env(cfg)
    nc = env.data.num_classes
    model = load_weights(_model(cfg.arch, env, cfg.seed), cfg.checkpoint, cfg.arch, nc)
    teacher = None
    if crit.needs_teacher:
        teacher = load_weights(_model(cfg.teacher_arch, env, cfg.seed), cfg.teacher_checkpoint, cfg.teacher_arch, nc)
        teacher.eval().requires_grad_(False)
    out = prepare_out(cfg, "prune", env.is_main)
    dense_top1 = evaluate(model, env.test, cfg.amp)["top1"]
    params = prunable_parameters(model, cfg.prune_first, cfg.prune_last)
    t0 = time.perf_counter()
    keep = crit.masks_for(model, params, iter(env.score_loader(cfg.seed)) if crit.needs_data else None,
                          cfg.sparsity, cfg.scope, **_criterion_kwargs(cfg, env, teacher))
    score_s = time.perf_counter() - t0
    masks = MaskSet(keep).bind(model)
    masks.apply_()
    top1 = evaluate(model, env.test, cfg.amp)["top1"]
    report = sparsity_report(model, list(params))
    metrics = {"method": cfg.method, "dataset": cfg.dataset, "arch": cfg.arch,
               "target_sparsity": cfg.sparsity, "achieved_sparsity": report["sparsity"], "top1": top1,
               "dense_top1": dense_top1, "score_seconds": score_s, "sparsity": report}
    if env.is_main:
        save_tensors(out / "model.safetensors", model.state_dict(), {"format": "kdprune-model-v1"})
        masks.save(out / "masks.safetensors")
        write_json(out / "metrics.json", metrics)
    _log(env, f"{cfg.method} pruning to {report['sparsity']:.4f} sparsity: top-1 {dense_top1:.2f}% -> "
              f"{top1:.2f}% (no retraining) -> {out}")
    return metrics


# ------------------------------------------------------------------------------------------ run

def _sparsity_dir(out: Path, s: float) -> Path:
    return out / f"sparsity-{s:g}"


_COST_KEYS = ("epochs", "images_fwd_bwd", "teacher_forwards", "wall_seconds")


def _cost(m: dict | None) -> dict:
    return {k: (m or {}).get(k, 0) for k in _COST_KEYS}


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in _COST_KEYS}


class SaveRewindPoint(Callback):
    """Saves the weights after epoch ``rewind_epoch`` of dense training (0 is handled before training)."""

    def __init__(self, path: Path, rewind_epoch: int):
        self.path, self.rewind_epoch = path, rewind_epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch + 1 == self.rewind_epoch and trainer.is_main:
            save_tensors(self.path, unwrap(trainer.model).state_dict())


@dataclass
class RunContext:
    """What every recipe shares: config, data, output folder and the (lazily trained) shared stages."""

    cfg: RunConfig
    env: Env
    out: Path
    callbacks: tuple
    regimes: list[str]
    done: set = field(default_factory=set)
    rows: list[dict] = field(default_factory=list)
    _teacher: tuple | None = None
    _kd_student: tuple | None = None
    _dense_ce: tuple | None = None

    @property
    def nc(self) -> int:
        return self.env.data.num_classes

    def model(self, arch: str | None = None, seed_offset: int = 1) -> torch.nn.Module:
        return _model(arch or self.cfg.arch, self.env, self.cfg.seed + seed_offset)

    def teacher(self) -> tuple[torch.nn.Module, dict]:
        """The teacher (loaded or trained once) and its metrics."""
        if self._teacher is None:
            cfg, env = self.cfg, self.env
            teacher = _model(cfg.teacher_arch, env, cfg.seed)
            if cfg.teacher_checkpoint:
                load_weights(teacher, cfg.teacher_checkpoint, cfg.teacher_arch, self.nc)
                m = {"top1": evaluate(teacher, env.test, cfg.amp)["top1"], **_cost(None)}
            else:
                m = run_training_stage(self.out / "teacher", teacher, CrossEntropy(), optim_spec(cfg),
                                       cfg.teacher_epochs, env, cfg, desc=f"teacher {cfg.teacher_arch}",
                                       callbacks=self.callbacks, extra={"arch": cfg.teacher_arch})
            teacher.eval().requires_grad_(False)
            _log(env, f"teacher {cfg.teacher_arch}: top-1 {m['top1']:.2f}%")
            self._teacher = (teacher, m)
        return self._teacher

    def kd_student(self) -> tuple[torch.nn.Module, dict]:
        """The dense student trained under the teacher with L_total (the paper's step 2)."""
        if self._kd_student is None:
            cfg = self.cfg
            teacher, _ = self.teacher()
            student = self.model()
            if cfg.student_checkpoint:
                load_weights(student, cfg.student_checkpoint, cfg.arch, self.nc)
            m = run_training_stage(self.out / "student", student, _distillation(cfg), optim_spec(cfg),
                                   cfg.student_epochs, self.env, cfg, desc=f"student {cfg.arch} (KD)",
                                   teacher=teacher, callbacks=self.callbacks, extra={"arch": cfg.arch})
            _log(self.env, f"student {cfg.arch} ({cfg.kd_loss}, alpha={cfg.alpha}, T={cfg.temperature}): "
                           f"top-1 {m['top1']:.2f}%")
            self._kd_student = (student, m)
        return self._kd_student

    @property
    def rewind_file(self) -> Path:
        """The dense CE student's weights after epoch ``rewind_epoch`` (IMP and COLT rewind to them)."""
        return self.out / "dense-ce" / f"rewind-epoch{self.cfg.rewind_epoch}.safetensors"

    def dense_ce(self) -> tuple[torch.nn.Module, dict]:
        """A dense student trained with plain CE from the same initialisation (IMP's round 0).

        The stage always keeps its rewind point, so a dense stage trained for one method (or shared by a
        sweep) serves IMP and COLT too.
        """
        if self._dense_ce is None:
            cfg = self.cfg
            student = self.model()
            if cfg.rewind_epoch == 0 and self.env.is_main and not self.rewind_file.exists():
                save_tensors(self.rewind_file, student.state_dict())
            barrier()
            m = run_training_stage(self.out / "dense-ce", student, CrossEntropy(), optim_spec(cfg),
                                   cfg.student_epochs, self.env, cfg, desc=f"dense {cfg.arch} (CE)",
                                   callbacks=(*self.callbacks, SaveRewindPoint(self.rewind_file, cfg.rewind_epoch)),
                                   extra={"arch": cfg.arch})
            if not synced(self.rewind_file.is_file):
                raise UserError(f"{self.out / 'dense-ce'} was trained without its epoch-{cfg.rewind_epoch} rewind "
                                "point; delete that folder to retrain it")
            _log(self.env, f"dense {cfg.arch} (CE): top-1 {m['top1']:.2f}%")
            self._dense_ce = (student, m)
        return self._dense_ce

    def objective(self, regime: str):
        return _distillation(self.cfg) if regime == "kd" else CrossEntropy()

    def teacher_for(self, regime: str):
        return self.teacher()[0] if regime == "kd" else None

    def teacher_metrics(self, regime: str) -> dict | None:
        """The teacher's metrics in the kd regime (its training is part of that regime's cost), else None."""
        return self.teacher()[1] if regime == "kd" else None

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

    def record(self, s: float, regime: str, m: dict, pruned: dict, dense_top1: float, teacher_top1, cost: dict,
               scoring_batches: int, rdir: Path) -> None:
        cfg = self.cfg
        row = {
            "method": cfg.method, "dataset": cfg.dataset, "arch": cfg.arch, "teacher_arch": cfg.teacher_arch,
            "target_sparsity": s, "achieved_sparsity": m["sparsity"]["sparsity"], "regime": regime,
            "top1": m["top1"], "pruned_top1": pruned["top1"], "dense_top1": dense_top1,
            "teacher_top1": teacher_top1, "seed": cfg.seed, "epochs": m["epochs"],
            "total_epochs": cost["epochs"], "images_fwd_bwd": cost["images_fwd_bwd"],
            "teacher_forwards": cost["teacher_forwards"], "scoring_batches": scoring_batches,
            "wall_seconds": m["wall_seconds"], "total_wall_seconds": cost["wall_seconds"],
            "nonzero_params": m["sparsity"]["nonzero_params"], "total_params": m["sparsity"]["total_params"],
            "out": str(rdir),
        }
        self.rows.append(row)
        if self.env.is_main and result_key(row) not in self.done:
            append_jsonl(self.out / "results.jsonl", row)
            self.done.add(result_key(row))
        _log(self.env, f"sparsity {s:g} {regime}: top-1 {m['top1']:.2f}% (dense {dense_top1:.2f}%)")

    def retrain(self, rdir: Path, s: float, regime: str, state: dict, masks: MaskSet, epochs: int, lr: float,
                desc: str) -> tuple[dict, torch.nn.Module]:
        """Train a copy of ``state`` under ``masks`` in ``rdir``; returns (metrics, trained model)."""
        model = self.model(seed_offset=2)
        model.load_state_dict(state)
        if self.env.is_main and not is_finished(rdir):
            write_yaml(rdir / "config.yaml", {**to_dict(self.cfg), "target_sparsity": s, "regime": regime})
        m = run_training_stage(rdir, model, self.objective(regime), optim_spec(self.cfg, lr), epochs, self.env,
                               self.cfg, desc=desc, masks=masks, teacher=self.teacher_for(regime),
                               callbacks=self.callbacks, extra={"target_sparsity": s, "regime": regime})
        return m, model


def _score_batches(cfg, env: Env) -> int:
    return cfg.score_batches or min(len(env.train), 100)


def _criterion_kwargs(cfg, env: Env, teacher) -> dict:
    """What every criterion's ``score``/``masks_for`` takes besides the model, parameters and batches."""
    d = env.data
    return dict(objective=_distillation(cfg), teacher=teacher, seed=cfg.seed, form=cfg.score_form,
                num_batches=_score_batches(cfg, env), input_shape=(d.in_channels, d.image_size, d.image_size),
                synflow_iterations=cfg.synflow_iterations, grasp_temperature=cfg.grasp_temperature)


def _post_training(ctx: RunContext) -> None:
    """The paper's recipe: prune the KD-trained student once, then retrain in each regime."""
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    crit = get_criterion(get_method(cfg.method).criterion)
    teacher, t_metrics = ctx.teacher()
    student, s_metrics = ctx.kd_student()
    params = prunable_parameters(student, cfg.prune_first, cfg.prune_last)
    score_file = out / "scores.safetensors"
    batches = lambda: iter(env.score_loader(cfg.seed)) if crit.needs_data else None  # noqa: E731
    kwargs = _criterion_kwargs(cfg, env, teacher if crit.needs_teacher else None)
    if crit.iterative:
        scores, score_info = None, {"method": cfg.method, "seconds": 0.0, "batches": 0}
    elif synced(lambda: score_file.is_file() and (out / "scores.json").is_file()):
        scores, score_info = load_tensors(score_file), read_json(out / "scores.json")
    else:
        t0 = time.perf_counter()
        scores = crit.score(student, params, batches(), **kwargs)
        n_batches = kwargs["num_batches"] if crit.needs_data else 0
        score_info = {"method": cfg.method, "seconds": time.perf_counter() - t0, "batches": n_batches}
        if env.is_main:
            save_tensors(score_file, scores, {"method": cfg.method})
            write_json(out / "scores.json", score_info)
        barrier()
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    shared = _add(_add(_cost(t_metrics), _cost(s_metrics)), {"wall_seconds": score_info["seconds"]})
    for s in cfg.sparsity:
        sdir = _sparsity_dir(out, s)
        if scores is None:
            masks = MaskSet(crit.masks_for(student, params, batches(), s, cfg.scope, **kwargs))
        else:
            masks = _masks(cfg, scores, s)
        student.load_state_dict(student_state)
        pruned = ctx.pruned_top1(sdir, student, masks, list(params))
        _log(env, f"sparsity {s:g}: one-shot pruned top-1 {pruned['top1']:.2f}% (before retraining)")
        for regime in ctx.regimes:
            rdir = sdir / regime
            m, _ = ctx.retrain(rdir, s, regime, student_state, masks, cfg.retrain_epochs, cfg.retrain_lr,
                               f"retrain {s:g} {regime}")
            ctx.record(s, regime, m, pruned, s_metrics["top1"], t_metrics["top1"], _add(shared, _cost(m)),
                       score_info["batches"], rdir)


def _at_init(ctx: RunContext) -> None:
    """Pruning at initialisation (SNIP, GraSP, SynFlow): score the untrained student, then train it sparse
    for --student-epochs at --lr. ``dense_top1`` is a dense CE student of the same schedule (a reference,
    not counted in the method's cost); the teacher is used (and counted) only by the kd regime."""
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    crit = get_criterion(get_method(cfg.method).criterion)
    _, dense = ctx.dense_ce()
    for s in cfg.sparsity:
        sdir = _sparsity_dir(out, s)
        init = ctx.model()
        init_state = {k: v.clone() for k, v in init.state_dict().items()}
        params = prunable_parameters(init, cfg.prune_first, cfg.prune_last)
        mask_file = sdir / "masks-init.safetensors"
        if synced(lambda: (sdir / "scoring.json").is_file()):
            masks, scoring = MaskSet.load(mask_file), read_json(sdir / "scoring.json")
        else:
            t0 = time.perf_counter()
            batches = iter(env.score_loader(cfg.seed)) if crit.needs_data else None
            masks = MaskSet(crit.masks_for(init, params, batches, s, cfg.scope, **_criterion_kwargs(cfg, env, None)))
            scoring = {"seconds": time.perf_counter() - t0,
                       "batches": _score_batches(cfg, env) if crit.needs_data else 0}
            if env.is_main:
                masks.save(mask_file)
                write_json(sdir / "scoring.json", scoring)
            barrier()
        pruned = ctx.pruned_top1(sdir, init, masks, list(params))
        for regime in ctx.regimes:
            rdir = sdir / regime
            m, _ = ctx.retrain(rdir, s, regime, init_state, masks, cfg.student_epochs, cfg.lr, f"sparse {s:g} {regime}")
            tm = ctx.teacher_metrics(regime)
            cost = _add(_add(_cost(tm), _cost(m)), {"wall_seconds": scoring["seconds"]})
            ctx.record(s, regime, m, pruned, dense["top1"], tm["top1"] if tm else None, cost, scoring["batches"],
                       rdir)


def run_pipeline(cfg: RunConfig, callbacks=()) -> list[dict]:
    """Run ``cfg.method``'s recipe at every sparsity and regime; returns the result rows."""
    from kdprune.methods.colt import run_colt
    from kdprune.methods.epsd import run_epsd
    from kdprune.methods.imp import run_imp

    method = get_method(cfg.method)
    t_start = time.perf_counter()
    env = make_env(cfg)
    # Given checkpoints are checked before anything is written.
    for path, arch in ((cfg.teacher_checkpoint, cfg.teacher_arch), (cfg.student_checkpoint, cfg.arch)):
        if path:
            load_weights(_model(arch, env, cfg.seed), path, arch, env.data.num_classes)
    out = prepare_out(cfg, "run", env.is_main)
    ctx = RunContext(cfg, env, out, tuple(callbacks), ["plain", "kd"] if cfg.retrain == "both" else [cfg.retrain])
    ctx.done = {result_key(r) for r in read_jsonl(out / "results.jsonl")}
    {"post-training": _post_training, "at-init": _at_init, "imp": run_imp, "colt": run_colt, "epsd": run_epsd}[method.recipe](ctx)
    table = format_table(ctx.rows)
    if env.is_main:
        write_text(out / "results.md", table)
        write_json(out / "metrics.json", {"method": cfg.method, "recipe": method.recipe, "results": ctx.rows,
                                          "wall_seconds_this_invocation": time.perf_counter() - t_start})
    return ctx.rows
