"""The paper's recipe with whole channels instead of single weights (``--structure channel``).

1. the teacher and 2. the KD student, as in :mod:`kdprune.methods.teacher_guided`;
3. per-weight saliency of every parameter (``teacher-guided``: ``sum_b |w * dL_total,b/dw|``; ``taylor-ce``,
   ``magnitude`` (group L1), ``l2``, ``random`` as baselines), summed per channel over its dependency group;
4. one global ranking, channels removed until the MACs shrink by each ``--target-macs`` factor (or
   ``--target-params`` of the parameters go), each group keeping ``--channel-floor`` of its channels; or,
   with ``--target-latency N``, widths allocated against a latency table measured on this machine in
   ``--latency-runtime`` until the model is N times faster as measured (:mod:`kdprune.pruning.latency`);
5. the smaller dense model retrained plain and/or KD-guided (no masks: nothing is left to hold at zero).

Rows: ``target_sparsity`` is the fraction of MACs (latency) removed (``1 - 1/factor``), ``achieved_sparsity``
the fraction of MACs actually removed; ``macs``, ``macs_reduction``, ``params`` give the model; every row also
carries the model's measured latency against the dense one (``latency_ms``, ``dense_latency_ms``,
``latency_speedup``; runtime, batch, threads and CPU) when the runtime is installed; ``variant`` says
``channel`` (``channel, widths x8`` with ``--channel-round 8``, ``channel, latency onnxruntime`` for a latency
target). Each retraining folder holds ``widths.json`` beside ``model.safetensors``; each target's folder
``plan.json`` (the removed channels, MACs, parameters and the latency measured).

``--channel-twin`` adds, per target, the unstructured model of the same size: the same student and the
same per-weight importance, one global threshold over the prunable weights removing as many parameters as
the channel cut did, retrained the same way with masks (rows with variant ``unstructured, same params``,
in ``macs-Nx/unstructured/``): what whole channels cost in accuracy against single weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from kdprune.distributed import barrier, on_rank0, synced
from kdprune.errors import UserError
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
from kdprune.methods.recipe import Recipe, regimes_of, teacher_epochs_of
from kdprune.methods.result import Cost
from kdprune.pruning import structured as S
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import weights_of
from kdprune.train import evaluate
from kdprune.train.stage import run_training_stage


@dataclass(frozen=True)
class Target:
    """One target of a channel run: a MACs factor, a fraction of the parameters, or a latency factor."""

    label: str  # its folder: macs-2x, params-0.5, latency-2x
    macs: float | None = None
    params: float | None = None
    latency: float | None = None

    @property
    def level(self) -> float:
        """The rows' level: the fraction of MACs (latency, parameters) removed."""
        return self.params if self.params is not None else 1.0 - 1.0 / (self.macs or self.latency)


def targets(cfg) -> list[Target]:
    """The run's targets, in the order given."""
    from kdprune.pruning.latency import parse_factor

    if cfg.target_params is not None:
        return [Target(f"params-{cfg.target_params:g}", params=cfg.target_params)]
    if getattr(cfg, "target_latency", None) is not None:
        return [Target(f"latency-{parse_factor(t):g}x", latency=parse_factor(t)) for t in str(cfg.target_latency).split(",")]
    return [Target(f"macs-{S.parse_macs_target(t):g}x", macs=S.parse_macs_target(t)) for t in str(cfg.target_macs).split(",")]


def make_timer(cfg, data, required: bool):
    """The run's latency timer (--latency-runtime, --latency-batch, the run's threads and input size); None
    when the runtime is not installed and nothing needs it (a MACs target: its rows then carry no latency)."""
    from kdprune.deploy.runtimes import make_timer as timer_for

    try:
        return timer_for(cfg.latency_runtime, (data.in_channels, data.image_size, data.image_size), cfg.latency_batch,
                         channels_last=cfg.channels_last)
    except UserError:
        if required:
            raise
        return None


def check_reachable(cfg, env) -> None:
    """Before anything trains: the fastest model the channel floor allows (every group at its floor; which
    channels go does not change the time) is timed against the dense one, and a latency target above its
    measured speed-up is one line naming the best reachable."""
    from kdprune.methods.context import build_model
    from kdprune.pruning.latency import build_problem, out_of_reach, removals

    wanted = max(t.latency for t in targets(cfg))
    d = env.data
    example = torch.zeros(1, d.in_channels, d.image_size, d.image_size)

    def measure() -> float:
        model = build_model(cfg.arch, env, cfg.seed).cpu().eval()
        scores = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        problem = build_problem(model, example, S.channel_groups(model, example, scores, S.ChannelOptions.of(cfg)),
                                cfg.channel_round)
        timer = make_timer(cfg, d, required=True)
        floor = removals(problem, problem.floor_widths())
        speedup = timer.compare(model, S._apply(copy.deepcopy(model), example, floor))[2]
        if speedup < wanted:
            raise out_of_reach(wanted, cfg.channel_floor, speedup, timer.key())
        return speedup

    log(env, f"--target-latency: at most {on_rank0(measure):.2f}x reachable at the channel floor, as measured")


def make_plan(cfg, target: Target, model, example, scores, timer, log_line=lambda m: None) -> S.ChannelPlan:
    """The channel plan of ``target`` under the run's channel options; a MACs or parameter plan records its
    measured latency when there is a timer. Used by ``kdprune run`` and ``kdprune prune``."""
    from kdprune.pruning.latency import measure_plan, plan_latency

    options = S.ChannelOptions.of(cfg)
    if target.latency is not None:
        return plan_latency(model, example, scores, target.latency, timer, options=options, log=log_line)
    plan = S.plan_channels(model, example, scores, target_macs=target.macs, target_params=target.params,
                           options=options)
    if timer is not None:  # every channel row records its measured latency
        plan.latency = measure_plan(model, S.prune_channels(copy.deepcopy(model), example, plan), timer)
    return plan


def plan_for(ctx: RunContext, target: Target, model, example, scores, timer) -> S.ChannelPlan:
    """The channel plan of ``target``, made on rank 0 (a latency measurement is made once) and shared."""
    return on_rank0(lambda: make_plan(ctx.cfg, target, model, example, scores, timer, lambda m: log(ctx.env, m)))


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
    todo = targets(cfg)
    timer = make_timer(cfg, d, required=any(t.latency is not None for t in todo))
    if timer is None:
        log(env, f"--latency-runtime {cfg.latency_runtime} is not installed: the rows carry no measured latency")
    for target in todo:
        label, factor = target.label, target.macs
        sdir = ctx.out / label
        model = ctx.model()
        model.load_state_dict(dense_state)
        plan_file = sdir / "plan.json"
        if synced(plan_file.is_file):
            plan = S.ChannelPlan(**{k: v for k, v in read_json(plan_file).items() if k != "macs_reduction"})
        else:
            plan = plan_for(ctx, target, model, example, scores, timer)
        S.prune_channels(model, example, plan)
        widths = {"arch": cfg.arch, "widths": S.channel_widths(model)}
        pruned_top1 = evaluate(model, env.test, cfg.amp)["top1"]
        if env.is_main and not plan_file.is_file():
            write_json(plan_file, plan.to_dict())
            write_json(sdir / "widths.json", widths)
        barrier()
        lat = plan.latency or {}
        speed = f", measured {lat['speedup']:.2f}x faster ({lat['runtime']}, batch {lat['batch']})" if lat else ""
        log(env, f"{label}: MACs {plan.macs_before:,} -> {plan.macs_after:,} ({plan.macs_reduction:.2f}x), parameters "
                 f"{plan.params_before:,} -> {plan.params_after:,}{speed}; top-1 before retraining {pruned_top1:.2f}%")
        s = target.level
        for regime in ctx.regimes:
            rdir = sdir / regime
            net = copy.deepcopy(model)
            if env.is_main and not (rdir / "widths.json").is_file():
                write_yaml(rdir / "config.yaml", {**config_dict(cfg), "target_macs": factor,
                                                  "target_latency": target.latency, "regime": regime})
                write_json(rdir / "widths.json", widths)
            m = run_training_stage(rdir, net, ctx.objective(regime), retrain_spec(cfg), cfg.retrain_epochs, env, cfg,
                                   desc=f"retrain {label} {regime}", teacher=ctx.teacher_for(regime),
                                   callbacks=ctx.callbacks, extra={"regime": regime, "structure": "channel"})
            removed = 1.0 - plan.macs_after / plan.macs_before
            m = {**m, "sparsity": {"sparsity": removed, "nonzero_params": plan.params_after,
                                   "total_params": plan.params_before}}
            ctx.record(s, regime, m, pruned_top1, shared + Cost.of(m), rdir, scoring_batches=n_batches,
                       variant=channel_variant(cfg), structure="channel", target_macs=factor, macs=plan.macs_after,
                       macs_before=plan.macs_before, macs_reduction=plan.macs_reduction, params=plan.params_after,
                       target_latency=target.latency, **latency_fields(plan.latency))
        if cfg.channel_twin:
            unstructured_twin(ctx, student, dense_state, scores, plan, sdir, target, pruned_top1, shared, n_batches)


def channel_variant(cfg) -> str:
    """The rows' ``variant``: ``channel``, ``channel, widths x8`` with ``--channel-round 8``, and for a latency
    target the runtime it was measured in (``channel, latency onnxruntime``)."""
    latency = f", latency {cfg.latency_runtime}" if getattr(cfg, "target_latency", None) is not None else ""
    return "channel" + latency + (f", widths x{cfg.channel_round}" if cfg.channel_round > 1 else "")


def latency_fields(latency: dict | None) -> dict:
    """A plan's measured latency as the row's fields (none for a plan made without a timer)."""
    if not latency:
        return {}
    return {"latency_runtime": latency["runtime"], "latency_batch": latency["batch"],
            "latency_threads": latency["threads"], "latency_cpu": latency["cpu"],
            "dense_latency_ms": latency["dense_ms"], "latency_ms": latency["pruned_ms"],
            "latency_speedup": latency["speedup"], "predicted_speedup": latency.get("predicted_speedup")}


def twin_sparsity(params: dict, plan: S.ChannelPlan) -> float:
    """The fraction of the prunable weights ``params`` (of the unpruned model) to remove so that its
    parameters (the unprunable ones, BatchNorm and biases, all kept) number as many as the channel-pruned
    model's."""
    prunable = sum(p.numel() for p in params.values())
    fixed = plan.params_before - prunable
    return min(max(1.0 - (plan.params_after - fixed) / prunable, 0.0), 1.0)


def unstructured_twin(ctx: RunContext, student, dense_state: dict, scores: dict, plan: S.ChannelPlan, sdir,
                      target: Target, channel_pruned_top1: float, shared: Cost, n_batches: int) -> None:
    """``--channel-twin``: the unstructured model with the channel model's parameter count (module docstring)."""
    cfg = ctx.cfg
    student.load_state_dict(dense_state)
    params = prunable_parameters(student, cfg.prune_first, cfg.prune_last)
    s_u = twin_sparsity(params, plan)
    masks = threshold_masks(cfg, {n: scores[n] for n in params}, s_u, weights_of(params))
    udir = sdir / "unstructured"
    pruned = ctx.pruned_top1(udir, student, masks, list(params))
    student.load_state_dict(dense_state)
    log(ctx.env, f"unstructured twin: {s_u:.2%} of the prunable weights removed for {plan.params_after:,} parameters; "
                 f"top-1 before retraining {pruned['top1']:.2f}% (channels: {channel_pruned_top1:.2f}%)")
    for regime in ctx.regimes:
        m, _ = ctx.retrain(udir / regime, s_u, regime, dense_state, masks, cfg.retrain_epochs, retrain_spec(cfg),
                           f"retrain twin {regime}")
        ctx.record(target.level, regime, m, pruned["top1"], shared + Cost.of(m), udir / regime,
                   scoring_batches=n_batches, variant="unstructured, same params", structure="unstructured",
                   twin_of="channel", target_macs=target.macs, target_latency=target.latency, params=plan.params_after)


def _epochs(cfg) -> int:
    twins = 2 if cfg.channel_twin else 1
    return teacher_epochs_of(cfg) + cfg.student_epochs + len(targets(cfg)) * regimes_of(cfg) * twins * cfg.retrain_epochs


RECIPE = Recipe("channel", run, pays_for_teacher=True, epochs=_epochs)
