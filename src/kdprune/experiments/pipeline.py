"""The three commands as functions: ``train_dense``, ``prune_checkpoint`` and ``run_pipeline``.

They orchestrate folders and files on top of the library: the recipes themselves are in
:mod:`kdprune.methods` (the paper's in :mod:`kdprune.methods.teacher_guided`).

``run_pipeline`` lays out ``--out`` as::

    config.yaml  metrics.json  results.jsonl  results.md  scores.safetensors
    teacher/     model.safetensors metrics.json metrics.jsonl   (absent with --teacher-checkpoint)
    student/     model.safetensors metrics.json metrics.jsonl   (the KD-trained dense student)
    sparsity-0.9/pruned.json                                    (one-shot pruned, before retraining)
    sparsity-0.9/plain/  model.safetensors masks.safetensors metrics.json config.yaml
    sparsity-0.9/kd/     ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from kdprune.distributed import synced_exists
from kdprune.errors import UserError
from kdprune.experiments.config import PruneConfig, RunConfig, TrainConfig, reads
from kdprune.experiments.outdir import follow_recorded, prepare_out
from kdprune.experiments.results import format_table
from kdprune.io import read_jsonl, save_tensors, write_json, write_text
from kdprune.losses import CrossEntropy
from kdprune.methods.context import (
    RunContext,
    build_model,
    criterion_kwargs,
    describe_compute,
    distillation,
    log,
    result_key,
    score_batches,
)
from kdprune.methods.registry import method_or_structured
from kdprune.models.weights import load_weights
from kdprune.pruning.criteria import get_criterion
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.progressive import progressive_masks, rescoring
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import MaskOptions, weights_of
from kdprune.train import evaluate
from kdprune.train.stage import make_env, optim_spec, run_training_stage


def _log0(msg: str) -> None:
    from kdprune import distributed

    if distributed.rank() == 0:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ train

def _check_models(env, seed: int, archs: dict[str, str]) -> None:
    """Build each architecture once and put one training batch through it before anything is written: a
    user's factory (``--arch module:factory``) that fails, ignores the channel or class count, or a model that
    does not fit the data, is one line naming the model, not an error after the teacher has trained."""
    from kdprune.data.batches import probe_batch

    probe_batch(env.train, "the training data", {f"{role} ({arch})": build_model(arch, env, seed)
                                                 for role, arch in archs.items()})


def _check_floor_fits(cfg: RunConfig, env) -> None:
    """--layer-floor against every --sparsity on the student's own layer sizes, before anything trains (the
    first level it does not fit would otherwise stop the run after the teacher and the student trained)."""
    if cfg.layer_floor <= 0 or cfg.structure != "unstructured" or not reads(cfg, "layer_floor"):
        return
    student = build_model(cfg.arch, env, cfg.seed)
    sizes = {n: p.numel() for n, p in prunable_parameters(student, cfg.prune_first, cfg.prune_last).items()}
    for s in cfg.sparsity:
        MaskOptions.of(cfg).check_fits(sizes, s)


def train_dense(cfg: TrainConfig, callbacks=()) -> dict:
    cfg = follow_recorded(cfg, _log0)
    env = make_env(cfg)
    _check_models(env, cfg.seed, {"model": cfg.arch})
    out = prepare_out(cfg, "train", env.is_main)
    if env.is_main:  # what the model expects: class names and the normalisation of the training split
        write_json(out / "dataset.json", env.data.describe())
    log(env, f"kdprune train: {cfg.dataset} on {describe_compute(env)} -> {out}")
    model = build_model(cfg.arch, env, cfg.seed)
    m = run_training_stage(out, model, CrossEntropy(), optim_spec(cfg), cfg.epochs, env, cfg,
                           desc=f"train {cfg.arch}", callbacks=callbacks,
                           extra={"arch": cfg.arch, "dataset": cfg.dataset, "seed": cfg.seed})
    log(env, f"{cfg.arch} on {cfg.dataset}: top-1 {m['top1']:.2f}% after {cfg.epochs} epochs -> {out}")
    return m


# ------------------------------------------------------------------------------------------ prune

def _load_for_pruning(cfg: PruneConfig, needs_teacher: bool):
    """What both kinds of ``kdprune prune`` start from: the data, the model to prune (and the teacher when the
    criterion needs one), the prepared ``--out`` with its ``dataset.json``, and the model's dense top-1.
    Returns ``(env, model, teacher or None, out, dense_top1)``."""
    if needs_teacher and not cfg.teacher_checkpoint:
        raise UserError(f"--method {cfg.method} needs --teacher-checkpoint (and --teacher-arch)")
    env = make_env(cfg)
    nc = env.data.num_classes
    model = load_weights(build_model(cfg.arch, env, cfg.seed), cfg.checkpoint, cfg.arch, nc)
    teacher = None
    if needs_teacher:
        teacher = load_weights(build_model(cfg.teacher_arch, env, cfg.seed), cfg.teacher_checkpoint, cfg.teacher_arch, nc)
        teacher.eval().requires_grad_(False)
    out = prepare_out(cfg, "prune", env.is_main)
    if env.is_main:  # what the model expects: class names and the normalisation of the training split
        write_json(out / "dataset.json", env.data.describe())
    log(env, f"kdprune prune: {cfg.dataset} on {describe_compute(env)} -> {out}")
    return env, model, teacher, out, evaluate(model, env.test, cfg.amp)["top1"]


def prune_checkpoint(cfg: PruneConfig) -> dict:
    if not cfg.checkpoint:
        raise UserError("prune needs --checkpoint (the model to prune)")
    cfg = follow_recorded(cfg, _log0)
    if cfg.structure == "channel":
        return prune_channels_checkpoint(cfg)
    crit = get_criterion(cfg.method)
    env, model, teacher, out, dense_top1 = _load_for_pruning(cfg, crit.needs_teacher)
    params = prunable_parameters(model, cfg.prune_first, cfg.prune_last)
    t0 = time.perf_counter()
    kwargs = criterion_kwargs(crit, cfg, env, teacher)
    batches = (lambda: iter(env.score_loader(cfg.seed))) if crit.needs_data else (lambda: None)  # noqa: E731
    if crit.iterative:
        keep = crit.masks_for(model, params, batches(), cfg.sparsity, cfg.scope, **kwargs)
    else:
        dense_state = {k: v.clone() for k, v in model.state_dict().items()}
        options = MaskOptions.of(cfg, weights_of(params))
        score_masked = rescoring(model, dense_state, lambda: crit.score(model, params, batches(), **kwargs))
        keep = progressive_masks(score_masked, cfg.sparsity, cfg.score_rounds, options)
        model.load_state_dict(dense_state)
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
    log(env, f"{cfg.method} pruning to {report['sparsity']:.4f} sparsity: top-1 {dense_top1:.2f}% -> "
              f"{top1:.2f}% (no retraining) -> {out}")
    return metrics


# ------------------------------------------------------------------------------------------ run

def run_pipeline(cfg: RunConfig, callbacks=()) -> list[dict]:
    """Run ``cfg.method``'s recipe at every sparsity and regime; returns the result rows."""
    method = method_or_structured(cfg)
    t_start = time.perf_counter()
    cfg = follow_recorded(cfg, _log0)
    env = make_env(cfg)
    # Given checkpoints, and the models themselves, are checked before anything is written.
    for path, arch in ((cfg.teacher_checkpoint, cfg.teacher_arch), (cfg.student_checkpoint, cfg.arch)):
        if path:
            load_weights(build_model(arch, env, cfg.seed), path, arch, env.data.num_classes)
    _check_models(env, cfg.seed, {"student": cfg.arch, "teacher": cfg.teacher_arch})
    _check_floor_fits(cfg, env)
    if method.recipe.check is not None:
        method.recipe.check(cfg, env)
    resuming = cfg.resume and synced_exists(Path(cfg.out) / "config.yaml")  # --resume on a new folder starts it
    if cfg.structure == "channel" and cfg.target_latency is not None and not resuming:
        from kdprune.methods.structured import check_reachable

        check_reachable(cfg, env)  # before anything trains: an unreachable target is one line
    out = prepare_out(cfg, "run", env.is_main)
    if env.is_main:  # what the model expects: class names and the normalisation of the training split
        write_json(out / "dataset.json", env.data.describe())
    log(env, f"kdprune run: {cfg.dataset} on {describe_compute(env)} -> {out}")
    ctx = RunContext(cfg, env, out, method, tuple(callbacks), ["plain", "kd"] if cfg.retrain == "both" else [cfg.retrain],
                     done={result_key(r) for r in read_jsonl(out / "results.jsonl")})
    method.recipe.run(ctx)
    table = format_table(ctx.rows)
    if env.is_main:
        write_text(out / "results.md", table)
        write_json(out / "metrics.json", {"method": cfg.method, "recipe": method.recipe.name, "results": ctx.rows,
                                          "wall_seconds_this_invocation": time.perf_counter() - t_start})
    return ctx.rows


def prune_channels_checkpoint(cfg: PruneConfig) -> dict:
    """``kdprune prune --structure channel``: remove whole channels to the target, write the smaller model
    (``model.safetensors``) and the widths that rebuild it (``widths.json``)."""
    from kdprune.pruning import structured as S

    criterion = S.channel_criterion(cfg.method)
    env, model, teacher, out, dense_top1 = _load_for_pruning(cfg, S.needs_teacher(criterion))
    t0 = time.perf_counter()
    d = env.data
    example = torch.zeros(1, d.in_channels, d.image_size, d.image_size, device=env.device)
    scores = S.saliency(model, criterion, iter(env.score_loader(cfg.seed)), teacher=teacher,
                        objective=distillation(cfg), num_batches=score_batches(cfg, env),
                        seed=cfg.seed)
    from kdprune.methods.structured import make_plan, make_timer, targets

    target = targets(cfg)[0]
    timer = make_timer(cfg, env.data, required=target.latency is not None)
    plan = make_plan(cfg, target, model, example, scores, timer, lambda m: log(env, m))
    S.prune_channels(model, example, plan)
    top1 = evaluate(model, env.test, cfg.amp)["top1"]
    metrics = {"method": cfg.method, "structure": "channel", "dataset": cfg.dataset, "arch": cfg.arch,
               "top1": top1, "dense_top1": dense_top1, "score_seconds": time.perf_counter() - t0, **plan.to_dict()}
    if env.is_main:
        save_tensors(out / "model.safetensors", model.state_dict(), {"format": "kdprune-model-v1"})
        write_json(out / "widths.json", {"arch": cfg.arch, "widths": S.channel_widths(model)})
        write_json(out / "metrics.json", metrics)
    lat = plan.latency or {}
    speed = (f", measured {lat['speedup']:.2f}x faster in {lat['runtime']} at batch {lat['batch']} "
             f"({lat['dense_ms']:.2f} -> {lat['pruned_ms']:.2f} ms)") if lat else ""
    log(env, f"{cfg.method} channel pruning: MACs {plan.macs_before:,} -> {plan.macs_after:,} "
             f"({plan.macs_reduction:.2f}x), parameters {plan.params_before:,} -> {plan.params_after:,}{speed}; top-1 "
             f"{dense_top1:.2f}% -> {top1:.2f}% (no retraining) -> {out}")
    return metrics
