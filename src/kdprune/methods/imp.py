"""Lottery Ticket / iterative magnitude pruning with rewinding.

Frankle & Carbin (ICLR 2019), Algorithm "Identifying winning tickets" (Sec. 2): train the dense network,
prune p% of the remaining weights by magnitude, reset the survivors, retrain; repeat. Rewinding (Frankle
et al., ICML 2020, Sec. 3): reset the survivors to their values at epoch ``k`` of dense training instead
of initialisation ("late resetting").

kdprune's choices, each a flag:
* pruning is global magnitude over the prunable weights (``--scope layerwise`` for per-layer), removing
  ``--rate`` (default 20%) of the remaining weights per round; ``--rounds N`` instead sets the rate so
  that N rounds reach the highest target;
* a round whose step would pass a requested sparsity prunes to exactly that sparsity, records the
  result, and the next round continues from there, so every target of ``--sparsity`` is hit exactly;
* ``--rewind-epoch k`` (default 1; 0 resets to initialisation as in the original LTH); ``--imp-reinit``
  re-initialises the survivors randomly instead (the paper's control);
* round 0 is the dense CE student (``dense-ce/``, ``--student-epochs``); every round trains
  ``--student-epochs`` epochs with a fresh schedule at ``--lr``; the kd regime trains every round with
  ``L_total`` under the teacher (and counts the teacher's training).
Pruned weights have score -1 in the next round, so the masks are nested across rounds.
"""

from __future__ import annotations

from kdprune.io import load_tensors
from kdprune.methods.context import log
from kdprune.methods.recipe import Recipe, regimes_of
from kdprune.methods.result import Cost
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import MaskOptions, nest, prune_masks


def rate_per_round(cfg) -> float:
    """``--rate``, or with ``--rounds N`` the rate that reaches the highest target in N rounds."""
    return cfg.rate if cfg.rounds is None else 1.0 - (1.0 - max(cfg.sparsity)) ** (1.0 / cfg.rounds)


def schedule(targets: list[float], rate: float) -> list[tuple[float, bool]]:
    """The rounds' sparsities: ``1 - (1 - rate)^k``, with each target hit exactly; (sparsity, is_target)."""
    todo, out, current = sorted(targets), [], 0.0
    while todo:
        nxt = 1.0 - (1.0 - current) * (1.0 - rate)
        hit = nxt >= todo[0] - 1e-9
        if hit:
            nxt = todo.pop(0)
        out.append((nxt, hit))
        current = nxt
    return out


def run_imp(ctx) -> None:
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    rate = rate_per_round(cfg)
    dense_model, dense = ctx.stages.dense_ce()
    rewind_state = load_tensors(ctx.stages.rewind_file)
    dense_state = {k: v.clone() for k, v in dense_model.state_dict().items()}
    rounds = schedule(cfg.sparsity, rate)
    log(env, f"IMP: {len(rounds)} rounds at rate {rate:.3f}, rewind to epoch {cfg.rewind_epoch}"
              + (" (random re-init)" if cfg.imp_reinit else ""))
    for regime in ctx.regimes:
        state, masks = dense_state, None
        cost = Cost.of(dense) + ctx.teacher_cost(regime)
        for k, (s, is_target) in enumerate(rounds, 1):
            model = ctx.model(seed_offset=2)
            model.load_state_dict(state)
            params = prunable_parameters(model, cfg.prune_first, cfg.prune_last)
            scores = {n: p.detach().abs().float() for n, p in params.items()}
            scores = nest(scores, masks.masks if masks is not None else None)  # already pruned go first
            masks = MaskSet(prune_masks(scores, s, MaskOptions(cfg.scope, weights=params)))
            rdir = out / "imp" / regime / f"round-{k:02d}-{s:g}"
            pruned = ctx.pruned_top1(rdir, model, masks, list(params))
            start = rewind_state
            if cfg.imp_reinit:
                start = ctx.model(seed_offset=100 + k).state_dict()
            m, trained = ctx.retrain(rdir, s, regime, start, masks, cfg.student_epochs, cfg.lr,
                                     f"imp {k} {s:.3g} {regime}")
            cost = cost + Cost.of(m)
            state = {name: v.detach().clone() for name, v in trained.state_dict().items()}
            if is_target:
                ctx.record(s, regime, m, pruned["top1"], cost, rdir)


def _epochs(cfg) -> int:
    return cfg.student_epochs * (1 + len(schedule(cfg.sparsity, rate_per_round(cfg))) * regimes_of(cfg))


RECIPE = Recipe("imp", run_imp, pays_for_teacher=False, epochs=_epochs, iterative=True)
