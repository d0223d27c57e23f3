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
from kdprune.models import create_model
from kdprune.models.weights import load_weights
from kdprune.pruning.criteria import get_criterion
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import global_masks, layerwise_masks
from kdprune.train import evaluate


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

def _scores(cfg, env: Env, student, teacher, params) -> tuple[dict[str, torch.Tensor], float]:
    crit = get_criterion(cfg.method)
    batches = None
    if crit.needs_data:
        loader = env.score_loader(cfg.seed)
        batches = iter(loader)
    n_batches = cfg.score_batches or min(len(env.train), 100)
    t0 = time.perf_counter()
    scores = crit.score(student, params, batches, objective=_distillation(cfg), teacher=teacher,
                        seed=cfg.seed, form=cfg.score_form, num_batches=n_batches)
    return scores, time.perf_counter() - t0


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
    scores, score_s = _scores(cfg, env, model, teacher, params)
    masks = _masks(cfg, scores, cfg.sparsity).bind(model)
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


def run_pipeline(cfg: RunConfig, callbacks=()) -> list[dict]:
    """The whole method: teacher, KD student, one-shot pruning at every sparsity, retraining."""
    crit = get_criterion(cfg.method)
    t_start = time.perf_counter()
    env = make_env(cfg)
    nc = env.data.num_classes
    regimes = ["plain", "kd"] if cfg.retrain == "both" else [cfg.retrain]
    # Given checkpoints are checked before anything is written.
    teacher = _model(cfg.teacher_arch, env, cfg.seed)
    if cfg.teacher_checkpoint:
        load_weights(teacher, cfg.teacher_checkpoint, cfg.teacher_arch, nc)
    student = _model(cfg.arch, env, cfg.seed + 1)
    if cfg.student_checkpoint:
        load_weights(student, cfg.student_checkpoint, cfg.arch, nc)
    out = prepare_out(cfg, "run", env.is_main)

    # 1. teacher
    if cfg.teacher_checkpoint:
        t_metrics = {"top1": evaluate(teacher, env.test, cfg.amp)["top1"], "epochs": 0, "wall_seconds": 0.0,
                     "images_fwd_bwd": 0, "teacher_forwards": 0}
    else:
        t_metrics = run_training_stage(out / "teacher", teacher, CrossEntropy(), optim_spec(cfg),
                                       cfg.teacher_epochs, env, cfg, desc=f"teacher {cfg.teacher_arch}",
                                       callbacks=callbacks, extra={"arch": cfg.teacher_arch})
    teacher.eval().requires_grad_(False)
    _log(env, f"teacher {cfg.teacher_arch}: top-1 {t_metrics['top1']:.2f}%")

    # 2. student trained under the teacher with L_total
    s_metrics = run_training_stage(out / "student", student, _distillation(cfg), optim_spec(cfg),
                                   cfg.student_epochs, env, cfg, desc=f"student {cfg.arch} (KD)",
                                   teacher=teacher, callbacks=callbacks, extra={"arch": cfg.arch})
    dense_top1 = s_metrics["top1"]
    _log(env, f"student {cfg.arch} ({cfg.kd_loss}, alpha={cfg.alpha}, T={cfg.temperature}): top-1 {dense_top1:.2f}%")

    # 3. importance scores, once, from the trained student
    params = prunable_parameters(student, cfg.prune_first, cfg.prune_last)
    score_file = out / "scores.safetensors"
    if synced(lambda: score_file.is_file() and (out / "scores.json").is_file()):
        scores = load_tensors(score_file)
        score_info = read_json(out / "scores.json")
    else:
        scores, score_s = _scores(cfg, env, student, teacher if crit.needs_teacher else None, params)
        n_batches = (cfg.score_batches or min(len(env.train), 100)) if crit.needs_data else 0
        score_info = {"method": cfg.method, "seconds": score_s, "batches": n_batches,
                      "images": n_batches * cfg.batch_size * env.world_size}
        if env.is_main:
            save_tensors(score_file, scores, {"method": cfg.method})
            write_json(out / "scores.json", score_info)
        barrier()
    student_state = {k: v.clone() for k, v in student.state_dict().items()}

    # 4-5. one-shot pruning at each sparsity, then each retraining regime
    done = {result_key(r) for r in read_jsonl(out / "results.jsonl")}
    shared_wall = t_metrics["wall_seconds"] + s_metrics["wall_seconds"] + score_info["seconds"]
    rows = []
    for s in cfg.sparsity:
        sdir = _sparsity_dir(out, s)
        masks = _masks(cfg, scores, s)
        pruned_file = sdir / "pruned.json"
        if synced(pruned_file.is_file):
            pruned = read_json(pruned_file)
        else:
            student.load_state_dict(student_state)
            masks.bind(student).apply_()
            # Every rank must have built the identical mask (scores are averaged across ranks).
            per_rank = all_gather_object(masks.digest())
            if len(set(per_rank)) != 1:
                raise RuntimeError(f"ranks built different masks at sparsity {s}: {per_rank}")
            pruned = {"top1": evaluate(student, env.test, cfg.amp)["top1"],
                      "achieved_sparsity": sparsity_report(student, list(params))["sparsity"],
                      "mask_sha256_per_rank": per_rank}
            if env.is_main:
                write_json(pruned_file, pruned)
            barrier()
        _log(env, f"sparsity {s:g}: one-shot pruned top-1 {pruned['top1']:.2f}% (before retraining)")
        for regime in regimes:
            rdir = sdir / regime
            model = _model(cfg.arch, env, cfg.seed + 2)
            model.load_state_dict(student_state)
            objective = _distillation(cfg) if regime == "kd" else CrossEntropy()
            if env.is_main and not is_finished(rdir):
                write_yaml(rdir / "config.yaml", {**to_dict(cfg), "target_sparsity": s, "regime": regime})
            m = run_training_stage(rdir, model, objective, optim_spec(cfg, cfg.retrain_lr), cfg.retrain_epochs,
                                   env, cfg, desc=f"retrain {s:g} {regime}", masks=masks,
                                   teacher=teacher if regime == "kd" else None, callbacks=callbacks,
                                   extra={"target_sparsity": s, "regime": regime})
            row = {
                "method": cfg.method, "dataset": cfg.dataset, "arch": cfg.arch, "teacher_arch": cfg.teacher_arch,
                "target_sparsity": s, "achieved_sparsity": m["sparsity"]["sparsity"], "regime": regime,
                "top1": m["top1"], "pruned_top1": pruned["top1"], "dense_top1": dense_top1,
                "teacher_top1": t_metrics["top1"], "seed": cfg.seed, "epochs": cfg.retrain_epochs,
                "total_epochs": t_metrics["epochs"] + s_metrics["epochs"] + cfg.retrain_epochs,
                "images_fwd_bwd": t_metrics["images_fwd_bwd"] + s_metrics["images_fwd_bwd"] + m["images_fwd_bwd"],
                "teacher_forwards": s_metrics["teacher_forwards"] + m["teacher_forwards"],
                "scoring_batches": score_info["batches"],
                "wall_seconds": m["wall_seconds"],
                "total_wall_seconds": shared_wall + m["wall_seconds"],
                "nonzero_params": m["sparsity"]["nonzero_params"], "total_params": m["sparsity"]["total_params"],
                "out": str(rdir),
            }
            rows.append(row)
            if env.is_main and result_key(row) not in done:
                append_jsonl(out / "results.jsonl", row)
                done.add(result_key(row))
            _log(env, f"sparsity {s:g} {regime}: top-1 {m['top1']:.2f}% (dense {dense_top1:.2f}%)")

    table = format_table(rows)
    if env.is_main:
        write_text(out / "results.md", table)
        write_json(out / "metrics.json", {
            "teacher_top1": t_metrics["top1"], "dense_top1": dense_top1, "scoring": score_info,
            "results": rows, "wall_seconds_this_invocation": time.perf_counter() - t_start,
        })
    return rows
