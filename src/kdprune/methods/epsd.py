"""EPSD (Chen et al., AAAI 2024): early pruning with self-distillation, and its "Simple" counterpart.

1. the dense student trains for ``--epsd-warmup-epochs`` with the self-distillation (SD) loss (CS-KD,
   PS-KD or DLB, :mod:`kdprune.losses.self_distill`);
2. it is pruned once, with one global threshold, by a saliency ``sum_b |w * dL_b/dw|`` over
   ``--score-batches`` batches: ``L`` is the SD loss for the "EPSD" variant (weights that matter for
   distillation are kept), plain cross-entropy for the "Simple" variant (plain early pruning);
3. the sparse network trains from the warmed-up weights with the SD loss for ``--student-epochs``.

EPG (``--method epg``) is this recipe without self-distillation: CE warmup, CE saliency, CE training.
The paper names EPG as an early-pruning baseline but its reference could not be retrieved here; this
reading (early pruning by gradient saliency, no distillation) is kdprune's choice, and it is exactly the
"Simple" variant with the SD loss replaced by cross-entropy, so the two isolate the effect of SD.

The SD objective's state after warmup (PS-KD's prediction memory, DLB's last batch) is what the EPSD
saliency sees and what sparse training starts from. The regime is reported as ``sd`` (``plain`` for EPG;
``--retrain`` does not apply). ``dense_top1`` is the dense CE reference (not counted as cost).
"""

from __future__ import annotations

import time

import torch

from kdprune.distributed import barrier, synced
from kdprune.io import read_json, write_json
from kdprune.losses import CrossEntropy
from kdprune.losses.self_distill import SELF_DISTILLATION
from kdprune.methods.context import guards_variant, score_batches, sparsity_dir, threshold_masks
from kdprune.methods.recipe import Recipe
from kdprune.methods.result import Cost
from kdprune.pruning.criteria import loss_gradient_scores
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import weights_of
from kdprune.train.stage import optim_spec, run_training_stage


def _objective(sd: str | None, cfg):
    if sd is None:  # EPG: no self-distillation
        return CrossEntropy()
    cls = SELF_DISTILLATION[sd]
    return cls(seed=cfg.seed) if sd == "cskd" else cls()


def run_epsd(ctx) -> None:
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    sd = ctx.method.self_distillation  # None: EPG
    sd_saliency = ctx.method.criterion == "sd-saliency"  # EPSD; Simple and EPG score with CE
    regime, has_state = ("plain", False) if sd is None else ("sd", True)
    ctx.stages.dense_ce()
    warm_obj = _objective(sd, cfg)
    model = ctx.model()
    wdir = out / f"warmup-{sd or 'ce'}"
    warm = run_training_stage(wdir, model, warm_obj, optim_spec(cfg), cfg.epsd_warmup_epochs, env, cfg,
                              desc=f"warmup {sd or 'ce'}", callbacks=ctx.callbacks)
    state_file = wdir / "objective_state.pt"
    if has_state and synced(state_file.is_file):
        warm_obj.attach(env.train)
        warm_obj.load_state_dict(torch.load(state_file, map_location=env.device, weights_only=True))
    elif has_state and env.is_main:
        torch.save(warm_obj.state_dict(), state_file)
    barrier()
    sd_state = warm_obj.state_dict() if has_state else {}  # what every level starts from; scoring must not change it
    warm_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = prunable_parameters(model, cfg.prune_first, cfg.prune_last)
    weights = weights_of(params)
    scores_info = out / "scores.json"
    n_batches = score_batches(cfg, env)
    t0 = time.perf_counter()
    loader = env.score_loader(cfg.seed)
    if sd_saliency:
        warm_obj.attach(loader)
        warm_obj.start_epoch(0, 1)  # PS-KD: targets from (a copy of) the warmup's last predictions
        scores = loss_gradient_scores(model, params, loader.batches_with_index(), warm_obj, num_batches=n_batches)
    else:
        scores = loss_gradient_scores(model, params, iter(loader), CrossEntropy(), num_batches=n_batches)
    score_s = time.perf_counter() - t0
    if env.is_main and not scores_info.exists():
        write_json(scores_info, {"method": cfg.method, "seconds": score_s, "batches": n_batches})
    score_s = read_json(scores_info)["seconds"] if synced(scores_info.is_file) else score_s
    for s in cfg.sparsity:
        sdir = sparsity_dir(out, s)
        masks = threshold_masks(cfg, scores, s, weights)
        model.load_state_dict(warm_state)
        pruned = ctx.pruned_top1(sdir, model, masks, list(params))
        rdir = sdir / regime
        objective = _objective(sd, cfg)
        if sd_state:
            objective.load_state_dict(sd_state)
        net = ctx.model(seed_offset=2)
        net.load_state_dict(warm_state)
        m = run_training_stage(rdir, net, objective, optim_spec(cfg), cfg.student_epochs, env, cfg,
                               desc=f"{cfg.method} {s:g}", masks=masks, callbacks=ctx.callbacks,
                               extra={"target_sparsity": s, "regime": regime})
        cost = Cost.of(warm) + Cost.of(m) + Cost(wall_seconds=score_s)
        ctx.record(s, regime, m, pruned["top1"], cost, rdir, scoring_batches=n_batches, variant=guards_variant(cfg))


RECIPE = Recipe("epsd", run_epsd, pays_for_teacher=False, uses_retrain=False,
                epochs=lambda cfg: cfg.student_epochs * (1 + len(cfg.sparsity)) + cfg.epsd_warmup_epochs)
