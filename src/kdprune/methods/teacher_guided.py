"""The paper's method: teacher-guided one-shot pruning (Alim et al., IEEE BigData 2025).

The recipe, step by step, as :func:`run` does it:

1. a dense **teacher**, trained once (or given with ``--teacher-checkpoint``)        ``ctx.teacher()``
2. the **student** trained under it with ``L_total = alpha*CA-KLD + (1-alpha)*CE``   ``ctx.kd_student()``
3. **importance** of every prunable weight from the gradients of that same loss,
   ``S(w) = sum_b |w * dL_total,b/dw|`` over ``--score-batches`` batches             :func:`score_student`
4. **one global threshold** removes the target fraction at once                      ``threshold_masks``
5. **sparsity-aware retraining** of the pruned student, plain (CE) and KD-guided
   (``L_total``), pruned weights held at exactly zero                                ``ctx.retrain()``

``magnitude`` and ``random`` are this recipe with another criterion in step 3 (``kdprune methods``).

Beside the paper's exact method, as options that each show as their own rows (``variant``):
``--retrain-schedule`` (finetune | lr-rewind | restart) with ``--retrain-epochs`` as the budget, and the
layer-collapse guards ``--score-rounds R`` (progressive scoring, :mod:`kdprune.pruning.progressive`),
``--layer-floor`` and ``--score-norm`` (:mod:`kdprune.pruning.threshold`).
"""

from __future__ import annotations

import time

from kdprune.distributed import barrier, synced
from kdprune.io import load_tensors, read_json, save_tensors, write_json
from kdprune.methods.context import (
    RunContext,
    criterion_kwargs,
    log,
    retrain_spec,
    sparsity_dir,
    threshold_masks,
    variant,
)
from kdprune.methods.recipe import Recipe, regimes_of, teacher_epochs_of
from kdprune.methods.result import Cost
from kdprune.pruning.criteria import Criterion, get_criterion
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import MaskOptions, weights_of


def run(ctx: RunContext) -> None:
    cfg, env = ctx.cfg, ctx.env
    criterion = get_criterion(ctx.method.criterion)
    teacher, t_metrics = ctx.stages.teacher()                                       # step 1
    student, s_metrics = ctx.stages.kd_student()                                    # step 2
    params = prunable_parameters(student, cfg.prune_first, cfg.prune_last)
    kwargs = criterion_kwargs(criterion, cfg, env, teacher if criterion.needs_teacher else None)
    scores, score_info = score_student(ctx, criterion, student, params, kwargs)     # step 3
    dense_state = {k: v.clone() for k, v in student.state_dict().items()}
    weights = weights_of(params)  # the dense weights (--scope magnitude-budget sets its budgets from them)
    shared = Cost.of(t_metrics) + Cost.of(s_metrics) + Cost(wall_seconds=score_info["seconds"])
    for s in cfg.sparsity:
        sdir = sparsity_dir(ctx.out, s)
        student.load_state_dict(dense_state)  # the level before left its mask applied
        extra_scoring = {"seconds": 0.0, "batches": 0}
        if scores is None:  # an iterative criterion (SynFlow) builds its own masks
            batches = iter(env.score_loader(cfg.seed)) if criterion.needs_data else None
            masks = MaskSet(criterion.masks_for(student, params, batches, s, cfg.scope, **kwargs))
        elif cfg.score_rounds > 1:  # an option: progressive re-scoring (round 1 is the scores above)
            masks, extra_scoring = progressive(ctx, criterion, student, dense_state, params, kwargs, scores, s,
                                               weights)
        else:
            masks = threshold_masks(cfg, scores, s, weights)                         # step 4
        pruned = ctx.pruned_top1(sdir, student, masks, list(params))
        log(env, f"sparsity {s:g}: one-shot pruned top-1 {pruned['top1']:.2f}% (before retraining)")
        for regime in ctx.regimes:                                                  # step 5
            rdir = sdir / regime
            m, _ = ctx.retrain(rdir, s, regime, dense_state, masks, cfg.retrain_epochs, retrain_spec(cfg),
                               f"retrain {s:g} {regime}")
            cost = shared + Cost.of(m) + Cost(wall_seconds=extra_scoring["seconds"])
            ctx.record(s, regime, m, pruned["top1"], cost, rdir,
                       scoring_batches=score_info["batches"] + extra_scoring["batches"], variant=variant(cfg))


def score_student(ctx: RunContext, criterion: Criterion, student, params: dict, kwargs: dict):
    """Step 3: the scores of the trained student, computed once and kept in ``scores.safetensors`` so a
    resumed run does not score again; ``(None, info)`` for an iterative criterion."""
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    score_file = out / "scores.safetensors"
    if criterion.iterative:
        return None, {"method": cfg.method, "seconds": 0.0, "batches": 0}
    if synced(lambda: score_file.is_file() and (out / "scores.json").is_file()):
        return load_tensors(score_file), read_json(out / "scores.json")
    t0 = time.perf_counter()
    batches = iter(env.score_loader(cfg.seed)) if criterion.needs_data else None
    scores = criterion.score(student, params, batches, **kwargs)
    info = {"method": cfg.method, "seconds": time.perf_counter() - t0,
            "batches": kwargs["num_batches"] if criterion.needs_data else 0}
    if env.is_main:
        save_tensors(score_file, scores, {"method": cfg.method})
        write_json(out / "scores.json", info)
    barrier()
    return scores, info


def progressive(ctx: RunContext, criterion: Criterion, student, dense_state: dict, params: dict, kwargs: dict,
                first_scores: dict, sparsity: float, weights: dict) -> tuple[MaskSet, dict]:
    """``--score-rounds R``: the mask at ``sparsity`` reached in R score->mask steps, each re-scoring the
    masked student (no training); kept in ``sparsity-S/masks-progressive.safetensors``. Returns the masks
    and the scoring cost beyond the first round's (which ``score_student`` already paid)."""
    from kdprune.pruning.progressive import progressive_masks, rescoring

    cfg, env = ctx.cfg, ctx.env
    sdir = sparsity_dir(ctx.out, sparsity)
    mask_file, info_file = sdir / "masks-progressive.safetensors", sdir / "scoring-progressive.json"
    if synced(info_file.is_file):
        return MaskSet.load(mask_file), read_json(info_file)
    t0 = time.perf_counter()

    score_masked = rescoring(student, dense_state, lambda: criterion.score(
        student, params, iter(env.score_loader(cfg.seed)) if criterion.needs_data else None, **kwargs), first_scores)
    masks = MaskSet(progressive_masks(score_masked, sparsity, cfg.score_rounds, MaskOptions.of(cfg, weights)))
    student.load_state_dict(dense_state)
    info = {"seconds": time.perf_counter() - t0,
            "batches": (cfg.score_rounds - 1) * (kwargs.get("num_batches", 0) if criterion.needs_data else 0)}
    if env.is_main:
        masks.save(mask_file)
        write_json(info_file, info)
    barrier()
    return masks, info


RECIPE = Recipe("post-training", run, pays_for_teacher=True,
                epochs=lambda cfg: teacher_epochs_of(cfg) + cfg.student_epochs
                + len(cfg.sparsity) * regimes_of(cfg) * cfg.retrain_epochs)
