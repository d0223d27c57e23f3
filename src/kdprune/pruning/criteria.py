"""Importance criteria behind one protocol (after Synaptic-Flow's ``score()``/``mask()`` split).

``Criterion.score(model, params, batches, objective=..., teacher=..., seed=...)`` returns
``{canonical parameter name: float32 score tensor}``; a higher score means "keep". Thresholding is
separate (:mod:`kdprune.pruning.threshold`).

Teacher-guided score (the paper's criterion; the exact form is kdprune's default, see below). With
``L_b = alpha * CA-KLD(z_S, z_T) + (1 - alpha) * CE(z_S, y)`` on mini-batch ``b`` (the student in eval
mode so BatchNorm uses its running statistics, the teacher frozen), for every prunable weight ``w``:

    taylor  (default):  S(w) = sum_{b=1..B} | w * dL_b/dw |
    grad:               S(w) = sum_{b=1..B} | dL_b/dw |
    taylor2:            S(w) = sum_{b=1..B} ( w * dL_b/dw )^2

``B`` is ``--score-batches`` (default: one epoch, at most 100 batches). The absolute value is taken per
batch: a trained student's full-data gradient is close to zero, so ``|w * sum_b g_b|`` would mostly
measure noise, while per-batch first-order saliencies do not cancel. Under DDP each batch's gradient is
first averaged over the ranks (as DDP does in training), so every rank holds the same scores, equal to
those of one process with the same global batch, and builds the identical mask.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from kdprune.distributed import average_
from kdprune.choices import SCORE_FORMS
from kdprune.errors import UserError, check_choice
from kdprune.losses import Objective
from kdprune.data.batches import model_device, to_device


SCORE_BATCHES = 100  # the default number of score batches: one epoch, at most this many


def score_batch_count(given: int | None, n_batches: int) -> int:
    """``--score-batches`` / ``num_batches`` when given, else one epoch of ``n_batches``, at most 100."""
    return given or min(n_batches, SCORE_BATCHES)


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    paper: str
    needs_data: bool
    needs_teacher: bool
    fn: Callable[..., dict[str, torch.Tensor]]
    # Iterative criteria (SynFlow) build their mask themselves: masks_fn(model, params, batches, sparsity, scope, **kw)
    masks_fn: Callable[..., dict[str, torch.Tensor]] | None = None
    options: tuple[str, ...] = ()  # the keywords score()/masks_for() take; any other is an error

    @property
    def iterative(self) -> bool:
        return self.masks_fn is not None

    def select(self, kw: dict) -> dict:
        """The entries of ``kw`` this criterion takes (a caller holding every option passes them through this)."""
        return {k: v for k, v in kw.items() if k in self.options}

    def _check(self, kw: dict) -> None:
        unknown = sorted(set(kw) - set(self.options))
        if unknown:
            takes = ", ".join(self.options) or "no options"
            raise UserError(f"criterion {self.name!r} takes no option {unknown[0]!r} (it takes: {takes})")

    def score(self, model: nn.Module, params: dict[str, nn.Parameter],
              batches: Iterable | None = None, **kw) -> dict[str, torch.Tensor]:
        self._check(kw)
        if self.needs_data and batches is None:
            raise UserError(f"criterion {self.name} needs data batches")
        scores = self.fn(model, params, batches, **kw)
        return {n: s.detach().float() for n, s in scores.items()}

    def masks_for(self, model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable | None,
                  sparsity: float, scope: str = "global", **kw) -> dict[str, torch.Tensor]:
        """Boolean keep-masks at ``sparsity``: threshold the scores, or the criterion's own schedule."""
        from kdprune.pruning.threshold import MaskOptions, prune_masks

        if self.masks_fn is not None:
            self._check(kw)
            return self.masks_fn(model, params, batches, sparsity, scope, **kw)
        return prune_masks(self.score(model, params, batches, **kw), sparsity, MaskOptions(scope, weights=params))


def _magnitude(model, params, batches, **kw):
    return {n: p.detach().abs().float() for n, p in params.items()}


def _random(model, params, batches, *, seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in params.items()}


_FORMS = {
    "taylor": lambda w, g: (w * g).abs(),
    "grad": lambda w, g: g.abs(),
    "taylor2": lambda w, g: (w * g).square(),
}


def loss_gradient_scores(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable,
                         objective: Objective, *, teacher: nn.Module | None = None, form: str = "taylor",
                         num_batches: int | None = None, **kw) -> dict[str, torch.Tensor]:
    """Sum over batches of a per-batch gradient saliency of ``objective`` (see the module docstring)."""
    check_choice("score_form", form, SCORE_FORMS)
    if objective.needs_teacher and teacher is None:
        raise UserError("this objective needs a teacher")
    if teacher is not None:  # a teacher fresh from load_state_dict is in train mode: BN would drift
        teacher.eval().requires_grad_(False)
    fn = _FORMS[form]
    was_training = model.training
    model.eval()
    device = model_device(model)
    names, tensors = list(params), list(params.values())
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    seen = 0
    for batch in itertools.islice(batches, num_batches):
        batch = to_device(batch, device)
        if hasattr(objective, "forward_loss"):  # self-distillation: batches carry sample indices
            loss, _ = objective.forward_loss(model, *batch)
        else:
            x, y = batch[:2]
            teacher_logits = None
            if teacher is not None:
                with torch.inference_mode():
                    teacher_logits = teacher(x)
                teacher_logits = teacher_logits.clone()
            loss = objective(model(x), y, teacher_logits)
        grads = [g.float() for g in torch.autograd.grad(loss, tensors)]
        average_(grads)
        with torch.no_grad():
            for n, p, g in zip(names, tensors, grads):
                scores[n] += fn(p.detach().float(), g.float())
        seen += 1
    model.train(was_training)
    if seen == 0:
        raise UserError("no batches to score on (is the training set empty?)")
    return scores


def _teacher_guided(model, params, batches, *, objective=None, teacher=None, form="taylor",
                    num_batches=None, **kw):
    if objective is None or teacher is None:
        raise UserError("teacher-guided scoring needs a teacher (and the distillation objective)")
    return loss_gradient_scores(model, params, batches, objective, teacher=teacher, form=form,
                                num_batches=num_batches)


@contextmanager
def _batch_statistics(model: nn.Module):
    """Train mode (BatchNorm on batch statistics) without changing the model's running statistics."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])


def _snip(model, params, batches, *, num_batches=None, **kw):
    """SNIP (Lee et al., ICLR 2019, Eq. 6): connection sensitivity ``|w * dL/dw|`` of the cross-entropy,
    with the gradient summed over ``num_batches`` batches (the paper uses one) and BatchNorm on batch
    statistics (the network is at initialisation, its running statistics mean nothing yet)."""
    tensors = list(params.values())
    g = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    with _batch_statistics(model):
        for batch in itertools.islice(batches, num_batches):
            x, y = to_device(batch, model_device(model))[:2]
            loss = nn.functional.cross_entropy(model(x).float(), y)
            for acc, gi in zip(g, torch.autograd.grad(loss, tensors)):
                acc += gi.float()
    average_(g)
    return {n: (p.detach().float() * gi).abs() for (n, p), gi in zip(params.items(), g)}


def _grasp(model, params, batches, *, num_batches=None, grasp_temperature: float = 200.0, **kw):
    """GraSP (Wang et al., ICLR 2020, Eq. 8): ``S(-w) = -w * (H g)``, where ``g`` is the gradient of the
    cross-entropy of logits divided by ``grasp_temperature`` (200, as in the authors' code), summed over
    the batches, and ``H g`` is the Hessian-vector product over the same batches. GraSP removes the
    weights with the *largest* ``-w * Hg``, so the keep-score returned here is ``w * Hg``."""
    tensors = list(params.values())
    data = [to_device(b, model_device(model))[:2] for b in itertools.islice(batches, num_batches)]
    g = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    hg = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    with _batch_statistics(model):
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x).float() / grasp_temperature, y)
            for acc, gi in zip(g, torch.autograd.grad(loss, tensors)):
                acc += gi.float()
        average_(g)
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x).float() / grasp_temperature, y)
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            z = sum((gi * gd.detach()).sum() for gi, gd in zip(grads, g))
            for acc, h in zip(hg, torch.autograd.grad(z, tensors)):
                acc += h.float()
    average_(hg)
    return {n: p.detach().float() * h for (n, p), h in zip(params.items(), hg)}


def _need_input_shape(input_shape) -> tuple:
    if input_shape is None:
        raise UserError("synflow uses no data: pass input_shape=(channels, height, width) of one input")
    return tuple(input_shape)


def _synflow_scores(model, params, batches=None, *, input_shape=None, masks=None, **kw):
    """SynFlow (Tanaka et al., NeurIPS 2020, Eq. 2 and Algorithm 1): on a float64 copy of the model with
    every parameter and buffer replaced by its absolute value, in eval mode, ``R = 1^T f(1)`` for an
    all-ones input; the score is ``|w * dR/dw|``. No data is used."""
    import copy

    input_shape = _need_input_shape(input_shape)
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in itertools.chain(net.parameters(), net.buffers()):
            if t.is_floating_point():
                t.abs_()
    net_params = dict(net.named_parameters())
    tensors = [net_params[n] for n in params]
    if masks is not None:
        with torch.no_grad():
            for n, t in zip(params, tensors):
                t.mul_(masks[n].to(t.dtype))
    device = next(model.parameters()).device
    r = net(torch.ones((1, *input_shape), dtype=torch.float64, device=device)).sum()
    grads = torch.autograd.grad(r, tensors)
    return {n: (t.detach() * g).abs().float() for n, t, g in zip(params, tensors, grads)}


def _synflow_masks(model, params, batches, sparsity, scope, *, input_shape=None, synflow_iterations: int = 100, **kw):
    """Iterative SynFlow: ``n`` rounds of scoring and pruning with the exponential schedule of the
    paper, density after round ``k`` = ``(1 - sparsity) ** (k / n)``: :func:`progressive_masks` with the
    SynFlow score of the masked network. Pruned weights rank below every kept one, so the masks shrink
    monotonically and the last round removes exactly the target fraction."""
    from kdprune.pruning.progressive import progressive_masks
    from kdprune.pruning.threshold import MaskOptions

    input_shape = _need_input_shape(input_shape)
    return progressive_masks(lambda masks: _synflow_scores(model, params, None, input_shape=input_shape, masks=masks),
                             sparsity, synflow_iterations, MaskOptions(scope, weights=params))


CRITERIA: dict[str, Criterion] = {
    "teacher-guided": Criterion(
        "teacher-guided", "gradient saliency of alpha*CA-KLD + (1-alpha)*CE, summed over batches",
        "Alim et al., Teacher-Guided One-Shot Pruning via Context-Aware KD, IEEE BigData 2025",
        needs_data=True, needs_teacher=True, fn=_teacher_guided,
        options=("objective", "teacher", "form", "num_batches")),
    "magnitude": Criterion(
        "magnitude", "|w|, global threshold", "Han et al., Learning both Weights and Connections, NeurIPS 2015",
        needs_data=False, needs_teacher=False, fn=_magnitude),
    "random": Criterion(
        "random", "uniform random scores from the run's seed (a sanity baseline)",
        "Blalock et al., What is the State of Neural Network Pruning?, MLSys 2020",
        needs_data=False, needs_teacher=False, fn=_random, options=("seed",)),
    "snip": Criterion(
        "snip", "connection sensitivity |w * dCE/dw| at initialisation",
        "Lee et al., SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR 2019",
        needs_data=True, needs_teacher=False, fn=_snip, options=("num_batches",)),
    "grasp": Criterion(
        "grasp", "gradient-signal preservation -w * (H g) at initialisation",
        "Wang et al., Picking Winning Tickets Before Training by Preserving Gradient Flow, ICLR 2020",
        needs_data=True, needs_teacher=False, fn=_grasp,
        options=("num_batches", "grasp_temperature")),
    "synflow": Criterion(
        "synflow", "iterative synaptic flow |w * dR/dw|, data-free, 100 rounds, exponential schedule",
        "Tanaka et al., Pruning neural networks without any data by iteratively conserving synaptic flow, NeurIPS 2020",
        needs_data=False, needs_teacher=False, fn=_synflow_scores, masks_fn=_synflow_masks,
        options=("input_shape", "synflow_iterations")),
}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def compute_scores(name: str, model: nn.Module, params: dict[str, nn.Parameter],
                   batches: Iterable | None = None, **kw) -> dict[str, torch.Tensor]:
    """``get_criterion(name).score(...)``: a keyword the criterion does not take is an error."""
    return get_criterion(name).score(model, params, batches, **kw)
