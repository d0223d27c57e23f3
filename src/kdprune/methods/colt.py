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

Heads (``--colt-heads``). ``own`` (the default, as the public COLT code, ismail31416/COLT, runs it): each
ticket trains its own classifier over its C/P classes (labels remapped to 0..C/P-1), the classifier is not
part of the mask intersection, and the final ticket gets the fresh, dense C-class head of the
initialisation; the conv weights are pruned so that the sparsity over all prunable weights (head
included) is still exactly the target. ``shared``: kdprune's earlier reading, one C-class head trained on
C/P classes and pruned by intersection like the rest. Remaining differences from the reference, kept
because they make the comparison fair on kdprune's data loop: the reference prunes convolutions only
(kdprune also prunes the first conv and linear layers by default, ``--no-prune-first``/``--no-prune-last``
to match) and removes 15% per round (kdprune's ``--rate``, 20% by default; pass ``--rate 0.15``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kdprune.data import TensorLoader
from kdprune.distributed import barrier
from kdprune.errors import UserError
from kdprune.losses import CrossEntropy
from kdprune.models import create_model
from kdprune.methods.context import build_model, log, sparsity_dir
from kdprune.methods.imp import rate_per_round, schedule
from kdprune.methods.recipe import Recipe, regimes_of
from kdprune.methods.result import Cost
from kdprune.pruning.masks import MaskSet
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import _keep_mask, nest, split_flat
from kdprune.train.stage import optim_spec, run_training_stage


def worst_ranks(tickets: list[dict[str, torch.Tensor]], names: list[str],
                masks: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Per weight (flattened over ``names``), the worst over tickets of its magnitude rank (0 = largest)."""
    worst = None
    for state in tickets:
        scores = nest({n: state[n].detach().abs() for n in names}, masks)  # already pruned rank last
        flat = torch.cat([scores[n].double().flatten().cpu() for n in names])
        order = torch.sort(flat, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(flat.numel())
        worst = rank if worst is None else torch.maximum(worst, rank)
    return worst


def _masks_from_worst(worst: torch.Tensor, names: list[str], shapes: dict[str, torch.Size],
                      n_remove: int) -> dict[str, torch.Tensor]:
    keep = _keep_mask(-worst.double(), n_remove)
    return split_flat(keep, {name: shapes[name] for name in names})


def _subset(loader: TensorLoader, labels: torch.Tensor, classes: list[int], seed: int, remap: bool) -> TensorLoader:
    """The images of ``classes``; with ``remap`` their labels become 0..len(classes)-1 (a ticket's own head)."""
    labels = labels.cpu()
    idx = torch.isin(labels, torch.tensor(classes)).nonzero().flatten()
    sub = labels[idx]
    if remap:
        lut = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        sub = lut[sub]
    return TensorLoader(loader.images.cpu()[idx], sub, loader.batch_size,
                        mean=(loader.mean.flatten() / loader.scale).tolist(),
                        std=(1.0 / (loader.inv_std.flatten() * loader.scale)).tolist(),
                        train=loader.train, pad=loader.pad, flip=loader.flip, seed=seed, device=loader.device,
                        rank=loader.rank, world_size=loader.world_size, channels_last=loader.channels_last)


def _own_heads(cfg) -> bool:
    return getattr(cfg, "colt_heads", "shared") == "own"


def _prunable_and_head(model, cfg) -> tuple[dict, list[str]]:
    """The prunable weights and, with own heads, the names among them of the classifier (each ticket's own,
    never in the intersection; the final ticket gets the fresh, dense C-class head of the initialisation)."""
    params = prunable_parameters(model, cfg.prune_first, cfg.prune_last)
    body = prunable_parameters(model, cfg.prune_first, prune_last=False)
    return params, [n for n in params if n not in body] if _own_heads(cfg) else []


def check_reachable(cfg, env) -> None:
    """With own heads the C-class classifier stays dense, so a target that keeps no more weights than it (98% of
    a CIFAR-100 ResNet-20 keeps 5,533 of 276,656; its head alone is 6,400) is never reached: rounds would go on
    forever, each removing less. One line, before anything is written."""
    params, head = _prunable_and_head(build_model(cfg.arch, env, cfg.seed), cfg)
    n_total = sum(p.numel() for p in params.values())
    n_head = sum(params[n].numel() for n in head)
    top = max(cfg.sparsity)
    if n_head and round((1.0 - top) * n_total) <= n_head:
        most = 1.0 - (n_head + 1) / n_total
        raise UserError(f"COLT with own heads keeps the {n_head:,}-weight classifier dense, so it reaches at most "
                        f"{most:.2%} sparsity on this model, not {top:g}: lower --sparsity, or pass --colt-heads "
                        "shared (the head is pruned with the rest) or --no-prune-last (the head is not counted)")


def run_colt(ctx) -> None:
    cfg, env, out = ctx.cfg, ctx.env, ctx.out
    parts, own = cfg.colt_partitions, _own_heads(cfg)
    ctx.stages.dense_ce()
    init = ctx.model()
    init_state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    params, head = _prunable_and_head(init, cfg)
    all_names = list(params)
    n_total = sum(p.numel() for p in params.values())
    head_modules = tuple(n.rsplit(".", 1)[0] + "." for n in head)
    names = [n for n in all_names if n not in head]
    shapes = {n: params[n].shape for n in names}
    n_head = sum(params[n].numel() for n in head)
    groups = [list(range(env.data.num_classes))[p::parts] for p in range(parts)]
    envs = [replace(env, train=_subset(env.train, env.train.labels, g, cfg.seed + 17 * (p + 1), own),
                    test=_subset(env.test, env.test.labels, g, 0, own)) for p, g in enumerate(groups)]

    def ticket(p: int) -> torch.nn.Module:
        if not own:
            model = ctx.model()
            model.load_state_dict(init_state)
            return model
        torch.manual_seed(cfg.seed + 1 + 31 * (p + 1))  # the ticket's head: the same at every round (rewound)
        model = create_model(cfg.arch, len(groups[p]), env.data.in_channels).to(env.device)
        model.load_state_dict({k: v for k, v in init_state.items() if not k.startswith(head_modules)}, strict=False)
        return model

    log(env, f"COLT: {parts} class-partitioned tickets per round ({'own' if own else 'one shared'} heads), each "
             f"pruning {cfg.rate:.0%} of the remaining")
    todo, masks, cost, k, current = sorted(cfg.sparsity), None, Cost(), 0, 0.0
    while todo:
        k += 1
        rdir = out / "colt" / f"round-{k:02d}"
        tickets = []
        for p in range(parts):
            model = ticket(p)
            m = run_training_stage(rdir / f"ticket-{p}", model, CrossEntropy(), optim_spec(cfg), cfg.student_epochs,
                                   envs[p], cfg, desc=f"colt {k} ticket {p}", masks=masks,
                                   callbacks=ctx.callbacks, extra={"classes": groups[p]})
            cost = cost + Cost.of(m)
            tickets.append(model.state_dict())
        remaining = round((1.0 - current) * n_total) - n_head  # kept weights the tickets may still prune
        worst = worst_ranks(tickets, names, masks.masks if masks else None)
        natural = 1.0 - (int((worst < round((1.0 - cfg.rate) * remaining)).sum()) + n_head) / n_total
        is_target = natural >= todo[0] - 1e-9
        s = todo.pop(0) if is_target else natural
        # the ranks sorted once per round; the global sparsity (head included) is exact
        masks = MaskSet(_masks_from_worst(worst, names, shapes, int(round(s * n_total))))
        current = s
        if env.is_main:
            masks.save(rdir / "masks.safetensors")
        barrier()
        log(env, f"COLT round {k}: sparsity {s:.4f}")
        if not is_target:
            continue
        sdir = sparsity_dir(out, s)
        final = MaskSet({**masks.masks, **{h: torch.ones_like(params[h], dtype=torch.bool) for h in head}})
        probe = ctx.model()
        probe.load_state_dict(init_state)
        pruned = ctx.pruned_top1(sdir, probe, final, all_names)
        for regime in ctx.regimes:
            m, _ = ctx.retrain(sdir / regime, s, regime, init_state, final, cfg.student_epochs, cfg.lr,
                               f"colt final {s:g} {regime}")
            total = cost + Cost.of(m) + ctx.teacher_cost(regime)
            ctx.record(s, regime, m, pruned["top1"], total, sdir / regime,
                       variant="own heads" if own else "shared head")


def _epochs(cfg) -> int:
    """An upper bound: COLT's rounds are at most IMP's at the same rate."""
    rounds = len(schedule(cfg.sparsity, rate_per_round(cfg)))
    return cfg.student_epochs * (1 + rounds * regimes_of(cfg) + len(cfg.sparsity) * regimes_of(cfg))


RECIPE = Recipe("colt", run_colt, pays_for_teacher=False, epochs=_epochs, iterative=True, check=check_reachable)
