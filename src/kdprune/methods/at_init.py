"""Pruning at initialisation (SNIP, GraSP, SynFlow): score the untrained student, prune it once, then
train the sparse network for ``--student-epochs`` at ``--lr`` (plain and/or KD)."""

from __future__ import annotations

import time

from kdprune.distributed import barrier, synced
from kdprune.io import read_json, write_json
from kdprune.methods.context import RunContext, criterion_kwargs, score_batches, sparsity_dir
from kdprune.methods.recipe import Recipe, regimes_of
from kdprune.methods.result import Cost
from kdprune.pruning.criteria import get_criterion
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import prunable_parameters


def run(ctx: RunContext) -> None:
    """Pruning at initialisation (SNIP, GraSP, SynFlow): score the untrained student, then train it sparse
    for --student-epochs at --lr. ``dense_top1`` is a dense CE student of the same schedule (a reference,
    not counted in the method's cost); the teacher is used (and counted) only by the kd regime."""
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    crit = get_criterion(ctx.method.criterion)
    ctx.stages.dense_ce()
    for s in cfg.sparsity:
        sdir = sparsity_dir(out, s)
        init = ctx.model()
        init_state = {k: v.clone() for k, v in init.state_dict().items()}
        params = prunable_parameters(init, cfg.prune_first, cfg.prune_last)
        mask_file = sdir / "masks-init.safetensors"
        if synced(lambda: (sdir / "scoring.json").is_file()):
            masks, scoring = MaskSet.load(mask_file), read_json(sdir / "scoring.json")
        else:
            t0 = time.perf_counter()
            batches = iter(env.score_loader(cfg.seed)) if crit.needs_data else None
            masks = MaskSet(crit.masks_for(init, params, batches, s, cfg.scope, **criterion_kwargs(crit, cfg, env, None)))
            scoring = {"seconds": time.perf_counter() - t0,
                       "batches": score_batches(cfg, env) if crit.needs_data else 0}
            if env.is_main:
                masks.save(mask_file)
                write_json(sdir / "scoring.json", scoring)
            barrier()
        pruned = ctx.pruned_top1(sdir, init, masks, list(params))
        for regime in ctx.regimes:
            rdir = sdir / regime
            m, _ = ctx.retrain(rdir, s, regime, init_state, masks, cfg.student_epochs, cfg.lr, f"sparse {s:g} {regime}")
            cost = ctx.teacher_cost(regime) + Cost.of(m) + Cost(wall_seconds=scoring["seconds"])
            ctx.record(s, regime, m, pruned["top1"], cost, rdir, scoring_batches=scoring["batches"])


RECIPE = Recipe("at-init", run, pays_for_teacher=False,
                epochs=lambda cfg: cfg.student_epochs * (1 + len(cfg.sparsity) * regimes_of(cfg)))
