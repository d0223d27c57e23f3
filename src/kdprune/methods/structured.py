"""The paper's recipe with whole channels instead of single weights (``--structure channel``).

1. the teacher and 2. the KD student, as in :mod:`kdprune.methods.teacher_guided`;
3. per-weight saliency of every parameter (``teacher-guided``: ``sum_b |w * dL_total,b/dw|``; ``taylor-ce``,
   ``magnitude`` (group L1), ``l2``, ``random`` as baselines), summed per channel over its dependency group;
4. one global ranking, channels removed until the MACs shrink by each ``--target-macs`` factor (or
   ``--target-params`` of the parameters go), each group keeping ``--channel-floor`` of its channels;
5. the smaller dense model retrained plain and/or KD-guided (no masks: nothing is left to hold at zero).

Rows: ``target_sparsity`` is the fraction of MACs removed (``1 - 1/factor``), ``achieved_sparsity`` the
fraction actually removed; ``macs``, ``macs_reduction``, ``params`` give the model; ``variant`` says
``channel`` (``channel, widths x8`` with ``--channel-round 8``). Each retraining folder holds ``widths.json`` beside ``model.safetensors``.

``--channel-twin`` adds, per target, the unstructured model of the same size: the same student and the
same per-weight importance, one global threshold over the prunable weights removing as many parameters as
the channel cut did, retrained the same way with masks (rows with variant ``unstructured, same params``,
in ``macs-Nx/unstructured/``): what whole channels cost in accuracy against single weights.
"""

from __future__ import annotations

import copy
import time

import torch

from kdprune.distributed import barrier, synced
from kdprune.io import read_json, write_json, write_yaml
from kdprune.methods.context import (
    RunContext,
    config_dict,
    distillation,
    log,
    retrain_spec,
    score_batches,
    threshold_masks,
)
from kdprune.methods.recipe import Recipe, regimes_of
from kdprune.methods.result import Cost
from kdprune.pruning import structured as S
from kdprune.pruning.prunable import prunable_parameters
from kdprune.train import evaluate
from kdprune.train.stage import run_training_stage


def targets(cfg) -> list[tuple[str, float | None, float | None]]:
    """(label, MACs factor, parameter fraction) per target of the run."""
    if cfg.target_params is not None:
        return [(f"params-{cfg.target_params:g}", None, cfg.target_params)]
    return [(f"macs-{S.parse_macs_target(t):g}x", S.parse_macs_target(t), None) for t in str(cfg.target_macs).split(",")]


def run(ctx: RunContext) -> None:
    cfg, env = ctx.cfg, ctx.env
    criterion = S.channel_criterion(cfg.method)
    teacher, t_metrics = ctx.stages.teacher()
    student, s_metrics = ctx.stages.kd_student()
    d = env.data
    example = torch.zeros(1, d.in_channels, d.image_size, d.image_size, device=env.device)
    t0 = time.perf_counter()
    n_batches = score_batches(cfg, env) if criterion in S.DATA_CRITERIA else 0
    scores = S.saliency(student, criterion, iter(env.score_loader(cfg.seed)), teacher=teacher,
                        objective=distillation(cfg), num_batches=n_batches or None, seed=cfg.seed)
    score_s = time.perf_counter() - t0
    dense_state = {k: v.clone() for k, v in student.state_dict().items()}
    shared = Cost.of(t_metrics) + Cost.of(s_metrics) + Cost(wall_seconds=score_s)
    for label, factor, fraction in targets(cfg):
        sdir = ctx.out / label
        model = ctx.model()
        model.load_state_dict(dense_state)
        plan_file = sdir / "plan.json"
        if synced(plan_file.is_file):
            plan = S.ChannelPlan(**{k: v for k, v in read_json(plan_file).items() if k != "macs_reduction"})
        else:
            plan = S.plan_channels(model, example, scores, target_macs=factor, target_params=fraction,
                                   floor=cfg.channel_floor, round_to=cfg.channel_round)
        S.prune_channels(model, example, plan)
        widths = {"arch": cfg.arch, "widths": S.channel_widths(model)}
        pruned_top1 = evaluate(model, env.test, cfg.amp)["top1"]
        if env.is_main and not plan_file.is_file():
            write_json(plan_file, plan.to_dict())
            write_json(sdir / "widths.json", widths)
        barrier()
        log(env, f"{label}: MACs {plan.macs_before:,} -> {plan.macs_after:,} ({plan.macs_reduction:.2f}x), parameters "
                 f"{plan.params_before:,} -> {plan.params_after:,}; top-1 before retraining {pruned_top1:.2f}%")
        s = 1.0 - 1.0 / factor if factor else fraction  # the rows' level: MACs (or parameters) removed
        for regime in ctx.regimes:
            rdir = sdir / regime
            net = copy.deepcopy(model)
            if env.is_main and not (rdir / "widths.json").is_file():
                write_yaml(rdir / "config.yaml", {**config_dict(cfg), "target_macs": factor, "regime": regime})
                write_json(rdir / "widths.json", widths)
            m = run_training_stage(rdir, net, ctx.objective(regime), retrain_spec(cfg), cfg.retrain_epochs, env, cfg,
                                   desc=f"retrain {label} {regime}", teacher=ctx.teacher_for(regime),
                                   callbacks=ctx.callbacks, extra={"regime": regime, "structure": "channel"})
            removed = 1.0 - plan.macs_after / plan.macs_before
            m = {**m, "sparsity": {"sparsity": removed, "nonzero_params": plan.params_after,
                                   "total_params": plan.params_before}}
            ctx.record(s, regime, m, pruned_top1, shared + Cost.of(m), rdir, scoring_batches=n_batches,
                       variant=channel_variant(cfg), structure="channel", target_macs=factor, macs=plan.macs_after,
                       macs_before=plan.macs_before, macs_reduction=plan.macs_reduction, params=plan.params_after)
        if cfg.channel_twin:
            unstructured_twin(ctx, student, dense_state, scores, plan, sdir, s, factor, pruned_top1, shared, n_batches)


def channel_variant(cfg) -> str:
    """The rows' ``variant``: ``channel``, or ``channel, widths x8`` with ``--channel-round 8``."""
    return "channel" + (f", widths x{cfg.channel_round}" if cfg.channel_round > 1 else "")


def twin_sparsity(params: dict, plan: S.ChannelPlan) -> float:
    """The fraction of the prunable weights ``params`` (of the unpruned model) to remove so that its
    parameters (the unprunable ones, BatchNorm and biases, all kept) number as many as the channel-pruned
    model's."""
    prunable = sum(p.numel() for p in params.values())
    fixed = plan.params_before - prunable
    return min(max(1.0 - (plan.params_after - fixed) / prunable, 0.0), 1.0)


def unstructured_twin(ctx: RunContext, student, dense_state: dict, scores: dict, plan: S.ChannelPlan, sdir,
                      s: float, factor: float | None, channel_pruned_top1: float, shared: Cost, n_batches: int) -> None:
    """``--channel-twin``: the unstructured model with the channel model's parameter count (module docstring)."""
    cfg = ctx.cfg
    student.load_state_dict(dense_state)
    params = prunable_parameters(student, cfg.prune_first, cfg.prune_last)
    s_u = twin_sparsity(params, plan)
    masks = threshold_masks(cfg, {n: scores[n] for n in params}, s_u)
    udir = sdir / "unstructured"
    pruned = ctx.pruned_top1(udir, student, masks, list(params))
    student.load_state_dict(dense_state)
    log(ctx.env, f"unstructured twin: {s_u:.2%} of the prunable weights removed for {plan.params_after:,} parameters; "
                 f"top-1 before retraining {pruned['top1']:.2f}% (channels: {channel_pruned_top1:.2f}%)")
    for regime in ctx.regimes:
        m, _ = ctx.retrain(udir / regime, s_u, regime, dense_state, masks, cfg.retrain_epochs, retrain_spec(cfg),
                           f"retrain twin {regime}")
        ctx.record(s, regime, m, pruned["top1"], shared + Cost.of(m), udir / regime, scoring_batches=n_batches,
                   variant="unstructured, same params", structure="unstructured", twin_of="channel",
                   target_macs=factor, params=plan.params_after)


def _epochs(cfg) -> int:
    n_targets = len(str(cfg.target_macs or "x").split(","))
    twins = 2 if cfg.channel_twin else 1
    return cfg.teacher_epochs + cfg.student_epochs + n_targets * regimes_of(cfg) * twins * cfg.retrain_epochs


RECIPE = Recipe("channel", run, pays_for_teacher=True, epochs=_epochs)
