"""COLT: cyclic overlapping lottery tickets (Hossain et al. 2025; the paper's iterative, class-partitioned baseline).

Per round ``k``:

1. the classes are split into ``--colt-partitions`` interleaved groups (class ``c`` -> group ``c mod P``);
   for each group a ticket is trained from the initial weights, under the current mask, on that group's
   images only (CE, ``--student-epochs``);
2. each ticket keeps its top ``m = (1 - rate) * remaining`` weights by magnitude (already-pruned weights
   rank last) and the new mask is the *intersection* of the tickets' masks, so a round removes more than
   ``rate`` (this is why COLT needs fewer rounds than IMP);
3. when that natural sparsity reaches the next requested one, the round instead keeps exactly the
   target count: the weights whose *worst* rank over the tickets is best, i.e. the intersection of the
   tickets' top-``m'`` masks for the largest ``m'`` at which it holds no more than the count, filled up
   with weights ranked ``m'`` (lowest index first);
4. survivors are rewound to initialisation and the next round begins.

At each requested sparsity the final sparse network is trained from the initialisation on all the data
(plain or KD, ``--student-epochs``). kdprune's choices where the description leaves details open:
interleaved class groups, rewinding to initialisation, global magnitude ranks, ``--rate`` 20% per
ticket per round (``--rounds`` is not used by COLT). ``dense_top1`` is the dense CE reference (not counted as cost).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kdprune.data import TensorLoader
from kdprune.distributed import barrier
from kdprune.losses import CrossEntropy
from kdprune.methods.context import add_cost, cost_of, log, sparsity_dir
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import _keep_mask, split_flat
from kdprune.train.stage import optim_spec, run_training_stage


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
    return _masks_from_worst(worst_ranks(tickets, names, masks), names, shapes, sparsity)


def _masks_from_worst(worst: torch.Tensor, names: list[str], shapes: dict[str, torch.Size],
                      sparsity: float) -> dict[str, torch.Tensor]:
    keep = _keep_mask(-worst.double(), int(round(sparsity * worst.numel())))
    return split_flat(keep, {name: shapes[name] for name in names})


def _subset(loader: TensorLoader, labels: torch.Tensor, classes: list[int], seed: int) -> TensorLoader:
    idx = torch.isin(labels.cpu(), torch.tensor(classes)).nonzero().flatten()
    return TensorLoader(loader.images.cpu()[idx], labels.cpu()[idx], loader.batch_size,
                        mean=(loader.mean.flatten() / loader.scale).tolist(),
                        std=(1.0 / (loader.inv_std.flatten() * loader.scale)).tolist(),
                        train=loader.train, pad=loader.pad, flip=loader.flip, seed=seed, device=loader.device,
                        rank=loader.rank, world_size=loader.world_size, channels_last=loader.channels_last)


def run_colt(ctx) -> None:
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    parts = cfg.colt_partitions
    _, dense = ctx.dense_ce()
    init = ctx.model()
    init_state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    params = prunable_parameters(init, cfg.prune_first, cfg.prune_last)
    names, shapes = list(params), {n: p.shape for n, p in params.items()}
    n_total = sum(p.numel() for p in params.values())
    groups = [list(range(env.data.num_classes))[p::parts] for p in range(parts)]
    envs = [replace(env, train=_subset(env.train, env.train.labels, g, cfg.seed + 17 * (p + 1)),
                    test=_subset(env.test, env.test.labels, g, 0)) for p, g in enumerate(groups)]
    log(env, f"COLT: {parts} class-partitioned tickets per round, each pruning {cfg.rate:.0%} of the remaining")
    todo, masks, cost, k, current = sorted(cfg.sparsity), None, cost_of(None), 0, 0.0
    while todo:
        k += 1
        rdir = out / "colt" / f"round-{k:02d}"
        tickets = []
        for p in range(parts):
            model = ctx.model()
            model.load_state_dict(init_state)
            m = run_training_stage(rdir / f"ticket-{p}", model, CrossEntropy(), optim_spec(cfg), cfg.student_epochs,
                                   envs[p], cfg, desc=f"colt {k} ticket {p}", masks=masks,
                                   callbacks=ctx.callbacks, extra={"classes": groups[p]})
            cost = add_cost(cost, cost_of(m))
            tickets.append(model.state_dict())
        remaining = round((1.0 - current) * n_total)
        worst = worst_ranks(tickets, names, masks.masks if masks else None)
        natural = 1.0 - int((worst < round((1.0 - cfg.rate) * remaining)).sum()) / n_total
        is_target = natural >= todo[0] - 1e-9
        s = todo.pop(0) if is_target else natural
        masks = MaskSet(_masks_from_worst(worst, names, shapes, s))  # the ranks sorted once per round
        current = s
        if env.is_main:
            masks.save(rdir / "masks.safetensors")
        barrier()
        log(env, f"COLT round {k}: sparsity {s:.4f}")
        if not is_target:
            continue
        sdir = sparsity_dir(out, s)
        probe = ctx.model()
        probe.load_state_dict(init_state)
        pruned = ctx.pruned_top1(sdir, probe, masks, names)
        for regime in ctx.regimes:
            m, _ = ctx.retrain(sdir / regime, s, regime, init_state, masks, cfg.student_epochs, cfg.lr,
                               f"colt final {s:g} {regime}")
            tm = ctx.teacher_metrics(regime)
            total = add_cost(add_cost(cost, cost_of(m)), cost_of(tm))
            ctx.record(s, regime, m, pruned, dense["top1"], tm["top1"] if tm else None, total, 0, sdir / regime)
