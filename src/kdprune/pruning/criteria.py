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
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from kdprune.distributed import average_
import torch.nn as nn

from kdprune.errors import UserError
from kdprune.losses import Objective


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    paper: str
    needs_data: bool
    needs_teacher: bool
    fn: Callable[..., dict[str, torch.Tensor]]

    def score(self, model: nn.Module, params: dict[str, nn.Parameter],
              batches: Iterable | None = None, **kw) -> dict[str, torch.Tensor]:
        if self.needs_data and batches is None:
            raise ValueError(f"criterion {self.name} needs data batches")
        scores = self.fn(model, params, batches, **kw)
        return {n: s.detach().float() for n, s in scores.items()}


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
    if form not in _FORMS:
        raise UserError(f"unknown score form {form!r}; choose one of: {', '.join(_FORMS)}")
    if objective.needs_teacher and teacher is None:
        raise ValueError("this objective needs a teacher")
    fn = _FORMS[form]
    was_training = model.training
    model.eval()
    names, tensors = list(params), list(params.values())
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    seen = 0
    for x, y in itertools.islice(batches, num_batches):
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
        raise ValueError("teacher-guided scoring needs the distillation objective and a teacher")
    return loss_gradient_scores(model, params, batches, objective, teacher=teacher, form=form,
                                num_batches=num_batches)


CRITERIA: dict[str, Criterion] = {
    "teacher-guided": Criterion(
        "teacher-guided", "gradient saliency of alpha*CA-KLD + (1-alpha)*CE, summed over batches",
        "Alim et al., Teacher-Guided One-Shot Pruning via Context-Aware KD, IEEE BigData 2025",
        needs_data=True, needs_teacher=True, fn=_teacher_guided),
    "magnitude": Criterion(
        "magnitude", "|w|, global threshold", "Han et al., Learning both Weights and Connections, NeurIPS 2015",
        needs_data=False, needs_teacher=False, fn=_magnitude),
    "random": Criterion(
        "random", "uniform random scores from the run's seed (a sanity baseline)",
        "Blalock et al., What is the State of Neural Network Pruning?, MLSys 2020",
        needs_data=False, needs_teacher=False, fn=_random),
}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def compute_scores(name: str, model: nn.Module, params: dict[str, nn.Parameter],
                   batches: Iterable | None = None, **kw) -> dict[str, torch.Tensor]:
    return get_criterion(name).score(model, params, batches, **kw)
