"""COLT: cyclic overlapping lottery tickets (the paper's iterative, class-partitioned baseline).

Per round ``k`` (the sparsities follow IMP's schedule, see :func:`kdprune.methods.imp.schedule`):

1. the classes are split into ``--colt-partitions`` interleaved groups (class ``c`` -> group ``c mod P``);
   for each group a ticket is trained from the initial weights, under the current mask, on that group's
   images only (CE, ``--student-epochs``);
2. each ticket ranks the weights by magnitude (already-pruned weights last); the new mask keeps the
   weights whose *worst* rank over the tickets is best: exactly the intersection of the tickets' top-``m``
   masks for the largest ``m`` at which the intersection holds no more than the weights to keep, filled
   up to the exact count with the weights ranked ``m`` by both (lowest index first);
3. survivors are rewound to initialisation and the next round begins.

At each requested sparsity the final sparse network is trained from the initialisation on all the data
(plain or KD, ``--student-epochs``). kdprune's choices where the description leaves details open:
interleaved class groups, rewinding to initialisation, global magnitude ranks, IMP's 20%-per-round
schedule (``--rate``/``--rounds``). ``dense_top1`` is the dense CE reference (not counted as cost).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kdprune.data import TensorLoader
from kdprune.distributed import barrier
from kdprune.losses import CrossEntropy
from kdprune.methods.imp import schedule
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import _keep_mask


def worst_ranks(tickets: list[dict[str, torch.Tensor]], names: list[str],
                masks: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Per weight (flattened over ``names``), the worst over tickets of its magnitude rank (0 = largest)."""
    worst = None
    for state in tickets:
        flat = torch.cat([(state[n].detach().abs().double() if masks is None else
                           torch.where(masks[n].cpu(), state[n].detach().abs().double().cpu(), torch.tensor(-1.0,
                                       dtype=torch.float64))).flatten().cpu() for n in names])
        order = torch.sort(flat, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(flat.numel())
        worst = rank if worst is None else torch.maximum(worst, rank)
    return worst


def colt_masks(tickets: list[dict[str, torch.Tensor]], names: list[str], shapes: dict[str, torch.Size],
               masks: dict[str, torch.Tensor] | None, sparsity: float) -> dict[str, torch.Tensor]:
    worst = worst_ranks(tickets, names, masks)
    n = worst.numel()
    keep = _keep_mask(-worst.double(), int(round(sparsity * n)))
    out, start = {}, 0
    for name in names:
        size = shapes[name].numel()
        out[name] = keep[start:start + size].view(shapes[name])
        start += size
    return out


def _subset(loader: TensorLoader, labels: torch.Tensor, classes: list[int], seed: int) -> TensorLoader:
    idx = torch.isin(labels.cpu(), torch.tensor(classes)).nonzero().flatten()
    return TensorLoader(loader.images.cpu()[idx], labels.cpu()[idx], loader.batch_size,
                        mean=(loader.mean.flatten() / 255.0).tolist(), std=(1.0 / (loader.inv_std.flatten() * 255.0)).tolist(),
                        train=loader.train, pad=loader.pad, flip=loader.flip, seed=seed, device=loader.device,
                        rank=loader.rank, world_size=loader.world_size, channels_last=loader.channels_last)


def run_colt(ctx) -> None:
    from kdprune.experiments.pipeline import _add, _cost, _log, _sparsity_dir
    from kdprune.experiments.stages import optim_spec, run_training_stage

    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    parts = cfg.colt_partitions
    rate = cfg.rate if cfg.rounds is None else 1.0 - (1.0 - max(cfg.sparsity)) ** (1.0 / cfg.rounds)
    _, dense = ctx.dense_ce()
    init = ctx.model()
    init_state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    params = prunable_parameters(init, cfg.prune_first, cfg.prune_last)
    names, shapes = list(params), {n: p.shape for n, p in params.items()}
    groups = [list(range(env.data.num_classes))[p::parts] for p in range(parts)]
    envs = [replace(env, train=_subset(env.train, env.train.labels, g, cfg.seed + 17 * (p + 1)),
                    test=_subset(env.test, env.test.labels, g, 0)) for p, g in enumerate(groups)]
    rounds = schedule(cfg.sparsity, rate)
    _log(env, f"COLT: {len(rounds)} rounds at rate {rate:.3f}, {parts} class-partitioned tickets per round")
    masks, cost = None, _cost(None)
    for k, (s, is_target) in enumerate(rounds, 1):
        rdir = out / "colt" / f"round-{k:02d}-{s:g}"
        tickets = []
        for p in range(parts):
            model = ctx.model()
            model.load_state_dict(init_state)
            m = run_training_stage(rdir / f"ticket-{p}", model, CrossEntropy(), optim_spec(cfg), cfg.student_epochs,
                                   envs[p], cfg, desc=f"colt {k} ticket {p}", masks=masks,
                                   callbacks=ctx.callbacks, extra={"classes": groups[p]})
            cost = _add(cost, _cost(m))
            tickets.append(model.state_dict())
        masks = MaskSet(colt_masks(tickets, names, shapes, masks.masks if masks else None, s))
        if env.is_main:
            masks.save(rdir / "masks.safetensors")
        barrier()
        if not is_target:
            continue
        sdir = _sparsity_dir(out, s)
        probe = ctx.model()
        probe.load_state_dict(init_state)
        pruned = ctx.pruned_top1(sdir, probe, masks, names)
        for regime in ctx.regimes:
            m, _ = ctx.retrain(sdir / regime, s, regime, init_state, masks, cfg.student_epochs, cfg.lr,
                               f"colt final {s:g} {regime}")
            total = _add(_add(cost, _cost(m)), _cost(ctx.teacher()[1]) if regime == "kd" else {})
            teacher_top1 = ctx.teacher()[1]["top1"] if regime == "kd" else None
            ctx.record(s, regime, m, pruned, dense["top1"], teacher_top1, total, 0, sdir / regime)
