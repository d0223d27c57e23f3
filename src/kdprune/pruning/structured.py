"""Structured (channel) pruning: teacher-guided group importance, Torch-Pruning for the surgery.

Removing whole channels makes a CNN smaller and faster on every device, but a channel cannot go alone: a
conv's output channel is also its BatchNorm's channel, the next convs' input slice and, through residual
additions, the same channel of every layer on that stream. Torch-Pruning (Fang et al., *DepGraph*, CVPR
2023; ``torch-pruning`` on PyPI) finds these dependency groups in any graph (residual adds, depthwise and
grouped convs, concatenations) and performs the surgery. kdprune brings the importance and the recipe:

* per-weight saliencies of every parameter (:func:`saliency`), for ``teacher-guided``
  ``S(w) = sum_b |w * dL_total,b/dw|`` as in unstructured pruning (student in eval mode, teacher frozen),
  ``taylor-ce`` the same with cross-entropy alone (the KD-free ablation), ``l1``/``l2`` magnitude, ``random``;
* group importance of a channel = the sum of ``S`` over every weight its removal deletes: the group's conv
  filters (and biases), its BatchNorm scale and shift, and the consumers' input slices (:class:`GroupSaliency`);
* one global ranking of all groups' channels, lowest first; each group keeps at least ``floor`` of its
  channels (and one); the first conv and the classifier are never pruned (their outputs stay intact);
* the number of channels removed is the smallest that reaches the target (a MACs reduction factor, e.g.
  2 for "2x", or a fraction of parameters removed), found by bisection on the pruned model's real MACs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn

from kdprune.errors import UserError
from kdprune.models.macs import count_macs

STRUCTURED_CRITERIA = ("teacher-guided", "taylor-ce", "l1", "l2", "random")
DATA_CRITERIA = ("teacher-guided", "taylor-ce")  # the structured criteria that score on batches


def channel_criterion(method: str) -> str:
    """The structured criterion a method name stands for: ``magnitude`` is group L1 magnitude for channels."""
    return "l1" if method == "magnitude" else method


def needs_teacher(criterion: str) -> bool:
    """Whether a structured criterion scores with the teacher (``teacher-guided``: the gradient of L_total)."""
    return criterion == "teacher-guided"


def _import_tp():
    import warnings

    with warnings.catch_warnings():  # its sources raise SyntaxWarnings (escape sequences) on first import
        warnings.simplefilter("ignore")
        import torch_pruning
        from torch_pruning.pruner import function
    return torch_pruning, function


tp, _F = _import_tp()  # a dependency of kdprune (0.02 s to import beside torch)
_OUT = (_F.prune_conv_out_channels, _F.prune_linear_out_channels)
_IN = (_F.prune_conv_in_channels, _F.prune_linear_in_channels)


# ----------------------------------------------------------------------------------------- saliency

def saliency(model: nn.Module, criterion: str, batches: Iterable | None = None, *, teacher: nn.Module | None = None,
             objective=None, num_batches: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-weight saliency of every parameter of ``model`` (name -> tensor of its shape), by ``criterion``."""
    from kdprune.losses import CrossEntropy, Distillation
    from kdprune.pruning.criteria import loss_gradient_scores

    params = dict(model.named_parameters())
    if criterion in DATA_CRITERIA:
        if batches is None:
            raise UserError(f"structured criterion {criterion!r} needs data")
        if needs_teacher(criterion):
            if teacher is None:
                raise UserError("structured criterion 'teacher-guided' needs a teacher")
            obj = objective or Distillation()
        else:
            obj, teacher = CrossEntropy(), None
        return loss_gradient_scores(model, params, batches, obj, teacher=teacher, num_batches=num_batches)
    if criterion == "l1":
        return {n: p.detach().abs().float() for n, p in params.items()}
    if criterion == "l2":
        return {n: p.detach().float().square() for n, p in params.items()}
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        return {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in params.items()}
    raise UserError(f"unknown structured criterion {criterion!r}; choose one of: {', '.join(STRUCTURED_CRITERIA)}")


class GroupSaliency(tp.importance.Importance):
    """A Torch-Pruning importance: per channel of a dependency group, the sum of the precomputed saliencies
    of every weight that removing the channel deletes (``by_param`` is keyed by parameter object): the
    group's conv and linear filters (and biases), its BatchNorm scale and shift, and its consumers' input
    slices (a depthwise conv's input channel is its output channel)."""

    def __init__(self, by_param: dict[nn.Parameter, torch.Tensor]):
        self.s = by_param

    def _get(self, p: nn.Parameter | None) -> torch.Tensor | None:
        return None if p is None else self.s.get(p)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total = None
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            root = group[i].root_idxs
            imp = None
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                w = self._get(layer.weight)
                if w is None:
                    continue
                depthwise = isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels
                if fn in _OUT or (depthwise and fn in _IN):
                    imp = w[idxs].flatten(1).sum(1)
                    b = self._get(layer.bias)
                    if b is not None and fn in _OUT:
                        imp = imp + b[idxs]
                elif fn in _IN:
                    per_in = w.transpose(0, 1).flatten(1).sum(1)
                    if isinstance(layer, nn.Conv2d) and layer.groups > 1:
                        per_in = per_in.repeat(layer.groups)
                    imp = per_in[idxs]
            elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine and fn == _F.prune_batchnorm_out_channels:
                imp = self._get(layer.weight)[idxs] + self._get(layer.bias)[idxs]
            if imp is None or any(r is None for r in root):
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64, device=imp.device)
            total.scatter_add_(0, torch.tensor(root, device=imp.device), imp.double())
        return total


# ----------------------------------------------------------------------------------------- counting

def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- planning

@dataclass
class ChannelPlan:
    """Which output channels of which group roots go (keyed by the root layer's name)."""

    removals: dict[str, list[int]] = field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    latency: dict | None = None  # measured (and, for a latency target, predicted) speed-up: pruning.latency

    @property
    def macs_reduction(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    def to_dict(self) -> dict:
        out = {"removals": self.removals, "macs_before": self.macs_before, "macs_after": self.macs_after,
               "params_before": self.params_before, "params_after": self.params_after,
               "macs_reduction": self.macs_reduction}
        return {**out, "latency": self.latency} if self.latency is not None else out


def parse_target(text: str | float, name: str, expected: str, change: str) -> float:
    """``"2x"``, ``"2"`` or ``2.0`` -> 2.0, a factor above 1; otherwise one line naming the option ``name``,
    what was ``expected`` and what must ``change`` by the factor."""
    raw = str(text).strip().lower().removesuffix("x")
    try:
        v = float(raw)
    except ValueError:
        raise UserError(f"{name}: expected {expected}, got {text!r}") from None
    if not math.isfinite(v) or v <= 1.0:
        raise UserError(f"{name}: {change} by a factor above 1x, got {text!r}")
    return v


def parse_macs_target(text: str | float) -> float:
    """``"2x"``, ``"2"`` or ``2.0`` -> 2.0: the factor by which MACs must shrink (more than 1)."""
    return parse_target(text, "target_macs", "a reduction factor like 2x or 4x", "the MACs must shrink")


def _ignored(model: nn.Module, keep_first: bool = True) -> list[nn.Module]:
    """The classifier and, with ``keep_first``, the stem conv: never pruned (their outputs stay intact)."""
    from kdprune.pruning.prunable import stem_and_classifier

    first, last = stem_and_classifier(model)
    modules = dict(model.named_modules())
    return [modules[n] for n in (last, first if keep_first else None) if n is not None]


def _groups(model: nn.Module, example_input: torch.Tensor, prune_stem: bool = False):
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:1])
    names = {m: n for n, m in model.named_modules()}
    groups = list(dg.get_all_groups(ignored_layers=_ignored(model, keep_first=not prune_stem),
                                    root_module_types=[nn.Conv2d, nn.Linear]))
    return dg, names, groups


@dataclass(frozen=True)
class ChannelOptions:
    """How channels may go, as one value (``--channel-floor``, ``--channel-round``, ``--channel-prune-stem``):
    every group keeps at least ``floor`` of its channels; ``round_to`` > 1 (an option): every group keeps a
    multiple of it (or all its channels), putting back its most important removed channels (CPU and GPU
    kernels run such widths faster); ``prune_stem`` (an option): the stem conv's output channels (the first
    stage's stream) may go too (kept whole by default)."""

    floor: float = 0.1
    round_to: int = 1
    prune_stem: bool = False

    def __post_init__(self):
        if self.round_to < 1:
            raise UserError(f"channel round: must be at least 1, got {self.round_to}")
        if not 0.0 <= self.floor < 1.0:
            raise UserError(f"channel floor: must lie in [0, 1), got {self.floor}")

    @classmethod
    def of(cls, cfg) -> "ChannelOptions":
        """The options of a run's config."""
        return cls(cfg.channel_floor, cfg.channel_round, cfg.channel_prune_stem)


@dataclass
class ChannelGroup:
    """A dependency group whose channels go together: its root layer's name, the group importance of each of
    its ``importance.numel()`` channels, the fewest it keeps (the floor), and its Torch-Pruning group."""

    root: str
    importance: torch.Tensor
    keep_min: int
    group: object = field(repr=False, default=None)

    @property
    def size(self) -> int:
        return self.importance.numel()


def channel_groups(model: nn.Module, example_input: torch.Tensor, scores: dict[str, torch.Tensor],
                   options: ChannelOptions = ChannelOptions()) -> list[ChannelGroup]:
    """The prunable dependency groups of ``model`` in Torch-Pruning's order, each with its channels' group
    saliency (:class:`GroupSaliency` over ``scores``) and its floor (``ceil(floor * channels)``, at least 1);
    with ``options.prune_stem`` the stem conv's output channels are a group too."""
    floor = options.floor
    dg, names, groups = _groups(model, example_input, options.prune_stem)
    imp_fn = GroupSaliency({p: scores[n] for n, p in model.named_parameters() if n in scores})
    out = []
    for g in groups:
        imp = imp_fn(g)
        if imp is not None:
            out.append(ChannelGroup(names[g[0].dep.target.module], imp, max(1, math.ceil(floor * len(imp) - 1e-9)), g))
    return out


def _apply(model: nn.Module, example_input: torch.Tensor, removals: dict[str, list[int]]) -> nn.Module:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:1])
    modules = dict(model.named_modules())
    for name, idxs in removals.items():
        if not idxs:
            continue
        layer = modules[name]
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(layer, fn, idxs=list(idxs))
        group.prune()
    return model


def plan_channels(model: nn.Module, example_input: torch.Tensor, scores: dict[str, torch.Tensor], *,
                  target_macs: float | None = None, target_params: float | None = None,
                  options: ChannelOptions = ChannelOptions()) -> ChannelPlan:
    """One global ranking of channels by group saliency, cut where the target is first reached.

    ``target_macs``: the MACs must shrink by this factor (> 1). ``target_params``: this fraction of the
    parameters must go (0 < f < 1). ``options``: the floor, width rounding and stem (:class:`ChannelOptions`).
    """
    floor, round_to = options.floor, options.round_to
    if (target_macs is None) == (target_params is None):
        raise UserError("give exactly one target: target_macs (e.g. 2 for 2x) or target_params (a fraction)")
    if target_params is not None and not 0.0 < target_params < 1.0:
        raise UserError(f"target_params: a fraction of the parameters to remove in (0, 1), got {target_params}")
    candidates = []  # (importance, group order, channel, root name)
    keep_min = {}
    for gi, g in enumerate(channel_groups(model, example_input, scores, options)):
        keep_min[g.root] = g.keep_min
        candidates += [(float(v), gi, c, g.root) for c, v in enumerate(g.importance.tolist())]
    candidates.sort(key=lambda t: (t[0], t[1], t[2]))
    budget = {r: sum(1 for c in candidates if c[3] == r) - keep_min[r] for r in keep_min}
    order = []
    for imp, gi, c, root in candidates:  # the floor: a group's last channels are not candidates
        if budget[root] > 0:
            order.append((root, c))
            budget[root] -= 1
    macs0, params0 = count_macs(model, example_input)[0], count_params(model)

    sizes = {r: sum(1 for c in candidates if c[3] == r) for r in keep_min}

    counted: dict[int, tuple[dict, int, int]] = {}

    def cut(k: int) -> tuple[dict, int, int]:
        """The removals of the ``k`` lowest channels, with the pruned model's MACs and parameters."""
        if k not in counted:
            rem: dict[str, list[int]] = {}
            for root, c in order[:k]:  # ascending importance
                rem.setdefault(root, []).append(c)
            if round_to > 1:  # give back the most important removed channels up to a multiple of round_to
                for r, chans in rem.items():
                    kept = sizes[r] - len(chans)
                    want = min(sizes[r], math.ceil(kept / round_to) * round_to)
                    rem[r] = chans[:len(chans) - (want - kept)]
            rem = {r: sorted(v) for r, v in rem.items() if v}
            m = _apply(copy.deepcopy(model), example_input, rem)
            counted[k] = (rem, count_macs(m, example_input)[0], count_params(m))
        return counted[k]

    def reached(k: int) -> bool:
        _, macs, params = cut(k)
        if target_macs is not None:
            return macs * target_macs <= macs0 * (1 + 1e-9)
        return params <= (1.0 - target_params) * params0

    if not reached(len(order)):
        _, macs, params = cut(len(order))
        raise UserError(f"the target is unreachable with a channel floor of {floor:g}: removing every other channel "
                        f"reaches {macs0 / max(macs, 1):.2f}x MACs and {1 - params / params0:.1%} of the parameters")
    lo, hi = 0, len(order)  # smallest k that reaches the target
    while lo < hi:
        mid = (lo + hi) // 2
        if reached(mid):
            hi = mid
        else:
            lo = mid + 1
    rem, macs, params = cut(lo)
    return ChannelPlan(rem, macs0, macs, params0, params)


def prune_channels(model: nn.Module, example_input: torch.Tensor, plan: ChannelPlan) -> nn.Module:
    """Apply ``plan`` to ``model`` in place (the modules shrink); returns it."""
    return _apply(model, example_input, plan.removals)


# ----------------------------------------------------------------------------------------- widths

def channel_widths(model: nn.Module) -> dict[str, dict]:
    """The shape of every Conv2d, Linear and BatchNorm: what a pruned model needs to be rebuilt."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"type": "conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"type": "linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = {"type": "batchnorm", "out": m.num_features}
    return out


def apply_widths(model: nn.Module, widths: dict[str, dict]) -> nn.Module:
    """Shrink ``model`` (a fresh instance of the original architecture) to ``widths``, in place: each
    layer is replaced by one of the same kind and settings with the recorded channels. Load the pruned
    state_dict afterwards."""
    modules = dict(model.named_modules())
    for name, w in widths.items():
        if name not in modules:
            raise UserError(f"the widths name a layer {name!r} this model does not have")
        m = modules[name]
        if w["type"] == "conv2d" and isinstance(m, nn.Conv2d):
            new = nn.Conv2d(w["in"], w["out"], m.kernel_size, m.stride, m.padding, m.dilation, w["groups"],
                            m.bias is not None, m.padding_mode)
        elif w["type"] == "linear" and isinstance(m, nn.Linear):
            new = nn.Linear(w["in"], w["out"], m.bias is not None)
        elif w["type"] == "batchnorm" and isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = type(m)(w["out"], m.eps, m.momentum, m.affine, m.track_running_stats)
        else:
            raise UserError(f"the widths describe {name!r} as {w['type']}, the model has {type(m).__name__}")
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent] if parent else model, leaf, new.to(next(m.parameters(), torch.empty(0)).device))
    return model
