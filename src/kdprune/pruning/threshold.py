"""Turning scores into masks: one global threshold, or one per layer, removing exactly k weights.

Scopes (``MaskOptions.scope``): ``global`` (the paper's) lets one threshold over all layers decide how much
of each layer survives. The others fix every layer's budget first and let the scores choose only *which*
weights a layer keeps: ``layerwise`` (the same fraction of every layer), ``erk`` (Erdős–Rényi-kernel
densities, Evci et al., "Rigging the Lottery", ICML 2020: density proportional to
``(c_in + c_out + k_h + k_w) / (c_in * c_out * k_h * k_w)``, dense where that passes 1) and
``magnitude-budget`` (each layer keeps as many weights as one global magnitude threshold would leave it).

Scores are compared in float32. ``k = round(sparsity * n)`` weights with the lowest scores are removed;
among weights whose score equals the k-th smallest, those with the lowest flat index (layers in module
order, then row-major within a layer) are removed first, so the result is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kdprune.choices import SCOPES, SCORE_NORMS
from kdprune.errors import UserError, check_choice


BUDGETED = ("erk", "magnitude-budget")  # the scopes that set every layer's budget before the scores act


@dataclass(frozen=True)
class MaskOptions:
    """How scores become masks (step 4), as one value: ``scope`` (one global threshold, the paper's, or one
    per layer) and the collapse guards ``layer_floor`` and ``score_norm`` (options, not the paper's)."""

    scope: str = "global"
    layer_floor: float = 0.0
    score_norm: str = "none"
    # the weights being pruned, {name: tensor}: ``magnitude-budget`` sets its budgets from their magnitudes
    weights: dict | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, cfg, weights: dict | None = None) -> "MaskOptions":
        """The mask options of a run's config (any object with these fields; absent ones keep the defaults),
        with the weights being pruned (only ``--scope magnitude-budget`` reads them)."""
        return cls(*(getattr(cfg, f, d) for f, d in (("scope", "global"), ("layer_floor", 0.0), ("score_norm", "none"))),
                   weights=weights)

    def check(self) -> "MaskOptions":
        """The checks between the options (one line each, before anything trains)."""
        check_choice("scope", self.scope, SCOPES)
        check_choice("score_norm", self.score_norm, SCORE_NORMS)
        if self.scope in BUDGETED and (self.layer_floor > 0 or self.score_norm != "none"):
            name = "layer_floor" if self.layer_floor > 0 else "score_norm"
            raise UserError(f"{name} is a guard of the global scope: scope {self.scope} sets every layer's "
                            f"budget itself")
        return self

    def check_fits(self, sizes: dict[str, int], sparsity: float) -> None:
        """``layer_floor`` against ``sparsity`` on layers of ``sizes`` ({name: weight count}): the floor must
        leave the threshold the weights it is to remove. Needs only the sizes, so a run checks every level
        before anything trains."""
        if self.layer_floor <= 0:
            return
        if self.scope == "layerwise" and self.layer_floor > 1.0 - sparsity + 1e-12:
            raise UserError(f"layer_floor {self.layer_floor} is above the density {1 - sparsity:g} every layer keeps")
        if self.scope == "global":
            total = sum(sizes.values())
            guarded = sum(_floor_count(n, self.layer_floor) for n in sizes.values())
            if int(round(sparsity * total)) > total - guarded:
                raise UserError(f"layer_floor {self.layer_floor} keeps {guarded:,} weights, more than sparsity "
                                f"{sparsity} leaves; lower one of them")


def _floor_count(n: int, floor: float) -> int:
    """How many of a layer's ``n`` weights ``layer_floor`` keeps: ``ceil(floor * n)``."""
    return min(n, math.ceil(floor * n - 1e-9))


def check_rounds(scope: str, rounds: int) -> None:
    """``erk`` builds one mask: its per-layer rounding can hand a layer back a weight at a higher sparsity, so
    masks reached in several nested rounds (progressive scoring, IMP, SynFlow) would not nest."""
    if scope == "erk" and rounds > 1:
        raise UserError("scope erk is one-shot: its per-layer rounding does not nest across rounds (progressive "
                        "scoring, IMP, COLT, SynFlow); use scope global, layerwise or magnitude-budget there")


def weights_of(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of the weights being pruned, taken while they are dense (``magnitude-budget`` reads it)."""
    return {n: p.detach().clone() for n, p in params.items()}


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not (0.0 < s < 1.0):  # also rejects NaN
        raise UserError(f"sparsity must lie strictly between 0 and 1, got {sparsity}")
    return s


def _keep_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask removing exactly the ``k`` smallest entries of ``flat``, ties by index."""
    n = flat.numel()
    keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return keep
    if k >= n:
        return torch.zeros_like(keep)
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    kth = flat.kthvalue(k).values
    below = flat < kth
    n_below = int(below.sum())
    ties = torch.nonzero(flat == kth, as_tuple=False).flatten()  # ascending index order
    keep[below] = False
    keep[ties[: k - n_below]] = False
    return keep


def global_masks(scores: dict[str, torch.Tensor], sparsity: float, layer_floor: float = 0.0) -> dict[str, torch.Tensor]:
    """One threshold over all layers: exactly ``round(sparsity * total)`` weights removed.

    ``layer_floor`` > 0 (a collapse guard, not the paper's): every layer keeps at least
    ``ceil(layer_floor * n_layer)`` weights, its highest-scored ones; the global threshold then removes
    the same exact count among the others.
    """
    check_sparsity(sparsity)
    names = list(scores)
    flats = [scores[n].detach().float().flatten() for n in names]
    k = int(round(sparsity * sum(f.numel() for f in flats)))
    if layer_floor > 0:
        MaskOptions("global", layer_floor).check_fits({n: f.numel() for n, f in zip(names, flats)}, sparsity)
        flats = [_floored(f, layer_floor) for f in flats]
    keep = _keep_mask(torch.cat(flats), k)
    return split_flat(keep, {n: scores[n].shape for n in names})


def _floored(flat: torch.Tensor, floor: float) -> torch.Tensor:
    """``flat`` with its ``ceil(floor * n)`` highest entries (ties by index) raised to +inf."""
    n_keep = _floor_count(flat.numel(), floor)
    out = flat.clone()
    out[torch.sort(flat, descending=True, stable=True).indices[:n_keep]] = math.inf
    return out


def normalize_scores(scores: dict[str, torch.Tensor], how: str = "none") -> dict[str, torch.Tensor]:
    """Per-layer score normalisation before one global threshold (a collapse guard, not the paper's):
    ``l2`` divides each layer's scores by their L2 norm (Molchanov et al., ICLR 2017), ``mean`` by their
    mean, so that no layer's scale alone decides how much of it survives."""
    check_choice("score_norm", how, SCORE_NORMS)
    if how == "none":
        return scores
    out = {}
    for n, v in scores.items():
        v = v.float()
        finite = v[torch.isfinite(v)]  # the scale of the weights still in play (nest() scores pruned ones -inf)
        scale = finite.norm() if how == "l2" else finite.mean()
        out[n] = v / scale if float(scale) > 0 else v
    return out


def prune_masks(scores: dict[str, torch.Tensor], sparsity: float, options: MaskOptions = MaskOptions()
                ) -> dict[str, torch.Tensor]:
    """Step 4 with its options: scores -> keep-masks removing exactly ``round(sparsity * N)`` weights. Every
    rule that thresholds scores (one-shot, progressive, IMP's rounds, SynFlow's iterations) comes here."""
    options.check()
    scores = normalize_scores(scores, options.score_norm)
    if options.scope == "global":
        return global_masks(scores, sparsity, options.layer_floor)
    if options.scope == "layerwise":
        options.check_fits({n: v.numel() for n, v in scores.items()}, sparsity)
        return layerwise_masks(scores, sparsity)
    if options.scope == "erk":
        return budget_masks(scores, erk_budgets({n: v.shape for n, v in scores.items()}, sparsity))
    if options.weights is None or not set(scores) <= set(options.weights):
        raise UserError("scope magnitude-budget needs the weights being pruned (their magnitudes set the budgets)")
    return budget_masks(scores, magnitude_budgets({n: options.weights[n] for n in scores}, sparsity))


def nest(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The scores of a next pruning round under ``masks`` (None: the first round, unchanged): weights already
    pruned score -inf, below every kept one whatever its sign (GraSP's are signed), so the next masks are nested
    in these and the kept weights keep their order."""
    if masks is None:
        return scores
    return {n: torch.where(masks[n].to(v.device), v.float(), torch.full_like(v.float(), -math.inf))
            for n, v in scores.items()}


def split_flat(flat: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Cut a tensor flattened over layers (in ``shapes``' order) back into per-layer tensors."""
    out, start = {}, 0
    for n, shape in shapes.items():
        size = torch.Size(shape).numel()
        out[n] = flat[start:start + size].view(shape)
        start += size
    return out


def layerwise_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """The same fraction removed from every layer (each layer thresholded on its own)."""
    check_sparsity(sparsity)
    return budget_masks(scores, {n: s.numel() - int(round(sparsity * s.numel())) for n, s in scores.items()})


def budget_masks(scores: dict[str, torch.Tensor], keep: dict[str, int]) -> dict[str, torch.Tensor]:
    """Every layer keeps exactly ``keep[name]`` weights, its highest-scored ones (ties by index)."""
    out = {}
    for n, s in scores.items():
        flat = s.detach().float().flatten()
        out[n] = _keep_mask(flat, flat.numel() - keep[n]).view_as(s)
    return out


def magnitude_budgets(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """How many weights each layer keeps under one global magnitude threshold at ``sparsity``."""
    masks = global_masks({n: w.detach().abs() for n, w in weights.items()}, sparsity)
    return {n: int(m.sum()) for n, m in masks.items()}


def erk_budgets(shapes: dict[str, torch.Size], sparsity: float) -> dict[str, int]:
    """Erdős–Rényi-kernel keep counts (RigL's ``erdos_renyi_kernel``): layer density ``eps * sum(shape) /
    prod(shape)`` with one ``eps`` for all layers, solved so that exactly ``N - round(sparsity * N)`` weights
    stay; a layer whose density would pass 1 stays dense and ``eps`` is solved again over the others.
    Rounding: largest remainders, so the total is exact."""
    check_sparsity(sparsity)
    sizes = {n: torch.Size(s).numel() for n, s in shapes.items()}
    total = sum(sizes.values())
    keep_total = total - int(round(sparsity * total))
    raw = {n: sum(shapes[n]) / sizes[n] for n in shapes}
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        if not free:
            eps = 0.0
            break
        budget = keep_total - sum(sizes[n] for n in dense)
        eps = budget / sum(raw[n] * sizes[n] for n in free)
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    exact = {n: float(sizes[n]) if n in dense else eps * raw[n] * sizes[n] for n in shapes}
    keep = {n: math.floor(v) for n, v in exact.items()}
    by_remainder = sorted((n for n in shapes if keep[n] < sizes[n]), key=lambda n: keep[n] - exact[n])
    for n in by_remainder[:keep_total - sum(keep.values())]:
        keep[n] += 1
    return keep
