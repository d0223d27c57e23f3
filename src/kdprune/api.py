"""kdprune's Python API: teacher-guided one-shot pruning for any ``nn.Module`` student and teacher.

Data is any re-iterable of ``(inputs, labels)`` batches with a length: a ``torch.utils.data.DataLoader``,
a list of tensor pairs, or kdprune's own :class:`kdprune.data.TensorLoader`. Batches are moved to the
model's device. Prunable weights are the ``weight`` of every ``Conv2d`` and ``Linear`` layer (depthwise
and grouped convolutions included); biases and normalisation layers are never pruned.

The whole recipe in one call::

    import kdprune
    result = kdprune.prune(student, teacher, train_loader, sparsity=0.9, test_data=test_loader, epochs=10)
    result.model, result.masks, result.metrics["top1"]

and the pieces beneath it, one per step of the method::

    kdprune.distill(student, teacher, train_loader, epochs=30)            # 2. the student under L_total
    scores = kdprune.score(student, train_loader, teacher=teacher)        # 3. sum_b |w * dL_total,b/dw|
    masks = kdprune.mask(scores, 0.9)                                     # 4. one global threshold
    kdprune.retrain(student, masks, train_loader, epochs=10, teacher=teacher)   # 5. KD (teacher) or plain
    kdprune.evaluate(student, test_loader)                                # {"top1": ..., "loss": ...}
    kdprune.export(student, "student.onnx", format="onnx", input_shape=(3, 32, 32))

Every function rejects keywords it does not know (Python's ``TypeError``) and options that do not apply
(``kdprune.errors.UserError``); the teacher is put in eval mode and frozen wherever it is used.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from kdprune.choices import RETRAIN_SCHEDULES
from kdprune.errors import UserError, check_choice
from kdprune.losses import CrossEntropy, Distillation
from kdprune.pruning.criteria import get_criterion, score_batch_count
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import MaskOptions, check_sparsity, prune_masks, weights_of
from kdprune.data.batches import check_batches, probe_batch
from kdprune.train.engine import OptimSpec, Trainer, make_optimizer, make_scheduler
from kdprune.train.engine import evaluate as _evaluate

__all__ = ["KeywordError", "PruneResult", "distill", "evaluate", "export", "mask", "progressive_mask", "prune",
           "prune_channels", "retrain", "retrain_optim", "score"]


class KeywordError(UserError, TypeError):
    """A keyword the function does not take (a TypeError, as Python's own, and a one-line UserError)."""


def _unknown_keyword(fn_name: str, key: str, names) -> KeywordError:
    close = difflib.get_close_matches(key, sorted(names), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return KeywordError(f"{fn_name}() got an unexpected keyword {key!r}{hint}")


def _keywords_checked(fn):
    """Reject a misspelt keyword before any work, naming it and its close matches (``epoch`` -> ``epochs``)."""
    sig = inspect.signature(fn)
    names = {k for k, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn  # it checks its **options itself (against its criterion's)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for k in kwargs:
            if k not in names:
                raise _unknown_keyword(fn.__name__, k, names)
        return fn(*args, **kwargs)

    return wrapper


_SET_BY_KDPRUNE = {"objective", "teacher", "num_batches"}  # criterion keywords the API fills in itself
_MASK_ROUNDS = {"synflow_iterations"}  # an iterative criterion's rounds: its masks' option, not its scores'


def _check_criterion_options(fn, crit, options: dict) -> None:
    """``options`` must be ``crit``'s own; a keyword no criterion takes is a misspelt argument of ``fn``."""
    from kdprune.pruning.criteria import CRITERIA

    own = set(crit.options) - _SET_BY_KDPRUNE
    anyone = {o for c in CRITERIA.values() for o in c.options} - _SET_BY_KDPRUNE
    for k in options:
        if k in own:
            continue
        if k in anyone:
            raise UserError(f"criterion {crit.name!r} takes no option {k!r} (it takes: {', '.join(sorted(own)) or 'none'})")
        names = set(inspect.signature(fn).parameters) - {"criterion_options", "options"}
        raise _unknown_keyword(fn.__name__, k, names | anyone)


def _check_training(epochs, lr, optimizer, momentum, nesterov, weight_decay, schedule) -> None:
    """The optimiser's arguments, checked by building a throwaway optimiser and scheduler."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise UserError(f"epochs: expected a whole number >= 0, got {epochs!r}")
    if lr is not None and not lr >= 0:
        raise UserError(f"lr: must not be negative, got {lr}")
    spec = OptimSpec(optimizer=optimizer, lr=lr or 0.1, momentum=momentum, nesterov=nesterov,
                     weight_decay=weight_decay, schedule=schedule)
    make_scheduler(make_optimizer([torch.zeros(1, requires_grad=True)], spec), spec, 1, 1)


def _distillation(alpha, temperature, kd_loss, kd_std) -> Distillation:
    return Distillation(alpha, temperature, kd_loss, std=kd_std)  # validates all four


# The CLI's retraining defaults (``kdprune run``: --retrain-schedule restart at --lr 0.1; finetune at
# --retrain-lr 0.01); tests/test_api.py checks that the two agree.
_RETRAIN_LR = {"restart": 0.1, "finetune": 0.01, "lr-rewind": 0.1}


def retrain_optim(retrain_schedule: str = "restart", epochs: int = 10, lr: float | None = None,
                  train_epochs: int | None = None, **optim) -> OptimSpec:
    """The retraining optimiser, as ``kdprune run --retrain-schedule`` builds it: ``restart`` (the training
    schedule from its peak ``lr`` 0.1, compressed into the retraining; the default, measured best on CIFAR-10),
    ``finetune`` (``lr`` 0.01 decayed over the retraining) or ``lr-rewind`` (the rates of the last ``epochs``
    of a ``train_epochs``-long training schedule)."""
    check_choice("retrain_schedule", retrain_schedule, RETRAIN_SCHEDULES)
    spec = OptimSpec(lr=_RETRAIN_LR[retrain_schedule] if lr is None else lr, **optim)
    if retrain_schedule == "lr-rewind":
        if not train_epochs or train_epochs < 1:
            raise UserError("retrain_schedule='lr-rewind' needs train_epochs: the length of the schedule it rewinds")
        spec.start_fraction = max(0.0, 1.0 - epochs / train_epochs)
    return spec


def _freeze(teacher: nn.Module | None) -> nn.Module | None:
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    return teacher


def _first_input_shape(data) -> tuple:
    x = next(iter(data))[0]
    return tuple(x.shape[1:])


def score(model: nn.Module, data=None, *, criterion: str = "teacher-guided", teacher: nn.Module | None = None,
          alpha: float = 0.9, temperature: float = 4.0, kd_loss: str = "ca-kld", kd_std: str = "population",
          num_batches: int | None = None, prune_first: bool = True, prune_last: bool = True,
          **options) -> dict[str, torch.Tensor]:
    """Importance scores of the prunable weights of ``model`` (higher = keep), by ``criterion``.

    ``teacher-guided`` (the paper's): ``sum_b |w * dL_total,b/dw|`` with ``L_total = alpha*CA-KLD +
    (1-alpha)*CE`` against ``teacher``, over ``num_batches`` batches of ``data`` (default: all of it, at
    most 100), the model in eval mode. Other criteria: ``magnitude``, ``random``, ``snip``, ``grasp``,
    ``synflow``. ``options`` are the criterion's own (``form`` for teacher-guided, ``seed`` for random,
    ``grasp_temperature``, ``synflow_iterations``, ``input_shape`` for synflow); any other is an error.
    """
    crit = get_criterion(criterion)
    _check_criterion_options(score, crit, options)
    for k in _MASK_ROUNDS & set(options):
        raise UserError(f"{k} sets the rounds of {criterion}'s masks, and score() returns one round's scores: "
                        f"pass it to kdprune.prune(..., criterion={criterion!r}), which prunes iteratively")
    if crit.needs_data:
        if data is None:
            raise UserError(f"criterion {criterion!r} needs data: score(model, data, ...)")
        check_batches(data)
    kw = dict(options)
    if crit.needs_teacher:
        if teacher is None:
            raise UserError(f"criterion {criterion!r} needs a teacher: score(model, data, teacher=...)")
        kw.setdefault("objective", _distillation(alpha, temperature, kd_loss, kd_std))
        kw["teacher"] = _freeze(teacher)
    elif teacher is not None:
        raise UserError(f"criterion {criterion!r} does not use a teacher")
    if crit.needs_data:
        kw["num_batches"] = score_batch_count(num_batches, len(data))
    if criterion == "synflow" and "input_shape" not in kw and data is not None:
        kw["input_shape"] = _first_input_shape(data)
    params = prunable_parameters(model, prune_first, prune_last)
    if not params:
        raise UserError("the model has no Conv2d or Linear weights to prune")
    if crit.needs_data:
        probe_batch(data, "data", {"model": model, "teacher": kw.get("teacher")})
    return crit.score(model, params, iter(data) if crit.needs_data else None, **kw)


def _check_mask_options(sparsity, scope, layer_floor, score_norm, rounds: int = 1) -> None:
    check_sparsity(sparsity)
    if not 0.0 <= layer_floor < 1.0:
        raise UserError(f"layer_floor: must lie in [0, 1), got {layer_floor}")
    MaskOptions(scope, layer_floor, score_norm).check()
    if not isinstance(rounds, int) or rounds < 1:
        raise UserError(f"rounds: must be at least 1, got {rounds}")


@_keywords_checked
def mask(scores: dict[str, torch.Tensor], sparsity: float, *, scope: str = "global", layer_floor: float = 0.0,
         score_norm: str = "none", weights: nn.Module | dict[str, torch.Tensor] | None = None) -> MaskSet:
    """Keep-masks removing exactly ``round(sparsity * N)`` of the ``N`` scored weights: one threshold over
    all layers (``scope="global"``, the paper's) or per-layer budgets, within which the scores choose:
    the same fraction of every layer (``"layerwise"``), Erdős–Rényi-kernel budgets (``"erk"``), or as many
    as global magnitude pruning of ``weights`` (the model, or its weights by name) leaves each layer
    (``"magnitude-budget"``). The collapse guards of the global scope (options, not the paper's): every
    layer keeps at least ``layer_floor`` of its weights; ``score_norm="l2"|"mean"`` puts each layer's
    scores on one scale first."""
    _check_mask_options(sparsity, scope, layer_floor, score_norm)
    if isinstance(weights, nn.Module):
        weights = prunable_parameters(weights)
    if scope == "magnitude-budget" and (weights is None or not set(scores) <= set(weights)):
        raise UserError("scope='magnitude-budget' needs weights=: the model, or its weights by the scores' names")
    return MaskSet(prune_masks(scores, sparsity, MaskOptions(scope, layer_floor, score_norm, weights)))


def progressive_mask(model: nn.Module, data, sparsity: float, *, rounds: int, scope: str = "global",
                     layer_floor: float = 0.0, score_norm: str = "none", first_scores: dict | None = None,
                     **score_options) -> MaskSet:
    """Progressive scoring (an option, not the paper's): reach ``sparsity`` in ``rounds`` score -> mask
    steps on an exponential schedule, re-scoring ``model`` with the current mask applied, no training in
    between. ``rounds=1`` is ``mask(score(model, data, ...), sparsity)``. ``model`` is left unchanged."""
    from kdprune.pruning.progressive import progressive_masks, rescoring

    _check_mask_options(sparsity, scope, layer_floor, score_norm, rounds)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weights = weights_of(prunable_parameters(model))
    score_masked = rescoring(model, state, lambda: score(model, data, **score_options), first_scores)
    try:
        return MaskSet(progressive_masks(score_masked, sparsity, rounds,
                                         MaskOptions(scope, layer_floor, score_norm, weights)))
    finally:
        model.load_state_dict(state)


def _train(model, objective, train_data, epochs, test_data, teacher, masks, spec: OptimSpec, progress, out_dir,
           desc) -> dict:
    trainer = Trainer(model, objective, spec, epochs, train_data, test_data, teacher=_freeze(teacher), masks=masks,
                      out_dir=out_dir, progress=progress, desc=desc)
    result = trainer.fit(resume=out_dir is not None)
    out = {"top1": result.get("test_top1"), "history": result["history"], "epochs": epochs,
           "images_fwd_bwd": trainer.images_seen + trainer.extra_images, "teacher_forwards": trainer.teacher_forwards}
    if masks is not None:
        out["sparsity"] = sparsity_report(model, list(masks.masks))["sparsity"]
    return out


def _check_data(train_data, test_data, models: dict) -> None:
    """Both splits re-iterable, and one batch of each through the models (student, teacher) before training."""
    check_batches(train_data, "train_data")
    probe_batch(train_data, "train_data", models)
    if test_data is not None:
        check_batches(test_data, "test_data")
        probe_batch(test_data, "test_data", {k: v for k, v in models.items() if k != "teacher"})


@_keywords_checked
def retrain(model: nn.Module, masks: MaskSet | None, train_data, *, epochs: int, test_data=None,
            teacher: nn.Module | None = None, alpha: float = 0.9, temperature: float = 4.0, kd_loss: str = "ca-kld",
            kd_std: str = "population", retrain_schedule: str = "restart", lr: float | None = None,
            train_epochs: int | None = None, optimizer: str = "sgd", momentum: float = 0.9, nesterov: bool = True,
            weight_decay: float = 5e-4, schedule: str = "cosine", progress: bool | None = None,
            out_dir: str | Path | None = None, desc: str = "retrain") -> dict:
    """Sparsity-aware retraining of ``model`` under ``masks`` (bound here): KD-guided with ``L_total`` when a
    ``teacher`` is given, plain cross-entropy otherwise. Pruned weights, their gradients and their optimizer
    state stay exactly zero. The learning rate follows ``retrain_schedule`` as ``kdprune run`` does (see
    :func:`retrain_optim`): by default ``restart``, the training schedule from peak ``lr=0.1`` compressed into
    ``epochs`` (``finetune`` is ``lr=0.01`` decayed). ``out_dir`` makes it resumable (a checkpoint per epoch).
    Every argument and one batch through the model(s) are checked before training. Returns the metrics."""
    _check_training(epochs, lr, optimizer, momentum, nesterov, weight_decay, schedule)
    spec = retrain_optim(retrain_schedule, epochs, lr, train_epochs, optimizer=optimizer, momentum=momentum,
                         nesterov=nesterov, weight_decay=weight_decay, schedule=schedule)
    objective = _distillation(alpha, temperature, kd_loss, kd_std) if teacher is not None else CrossEntropy()
    if masks is not None:  # None: a channel-pruned model, smaller and dense, nothing to hold at zero
        if not isinstance(masks, MaskSet):
            raise UserError("masks: expected a kdprune MaskSet (from kdprune.mask), or None")
        masks.bind(model)
    _check_data(train_data, test_data, {"model": model, "teacher": teacher})
    return _train(model, objective, train_data, epochs, test_data, teacher, masks, spec, progress, out_dir, desc)


@_keywords_checked
def distill(student: nn.Module, teacher: nn.Module, train_data, *, epochs: int, test_data=None, alpha: float = 0.9,
            temperature: float = 4.0, kd_loss: str = "ca-kld", kd_std: str = "population", lr: float = 0.1,
            optimizer: str = "sgd", momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 5e-4,
            schedule: str = "cosine", progress: bool | None = None, out_dir: str | Path | None = None,
            desc: str = "distill") -> dict:
    """Step 2 of the method: train the dense ``student`` under ``teacher`` with ``L_total``."""
    if teacher is None:
        raise UserError("distill() needs a teacher")
    _check_training(epochs, lr, optimizer, momentum, nesterov, weight_decay, schedule)
    objective = _distillation(alpha, temperature, kd_loss, kd_std)
    _check_data(train_data, test_data, {"student": student, "teacher": teacher})
    spec = OptimSpec(optimizer=optimizer, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                     schedule=schedule)
    return _train(student, objective, train_data, epochs, test_data, teacher, None, spec, progress, out_dir, desc)


@_keywords_checked
def evaluate(model: nn.Module, data) -> dict:
    """``{"top1": percent, "loss": mean cross-entropy}`` of ``model`` on ``data`` (eval mode)."""
    check_batches(data, "the evaluation data")
    probe_batch(data, "the evaluation data", {"model": model})
    return _evaluate(model, data)


@_keywords_checked
def export(model: nn.Module, path: str | Path, *, format: str = "dense", input_shape: tuple | None = None,
           fp16: bool = False) -> dict:
    """Write an in-memory model: ``dense`` (a plain state_dict in safetensors), ``sparse`` (bitmask or COO
    plus values, :func:`kdprune.deploy.sparse_format.load_sparse` reads it back) or ``onnx`` (needs
    ``input_shape=(C, H, W)``; checked against PyTorch by ONNX Runtime). Returns sizes and checks."""
    from kdprune.deploy.exporting import write_export

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_export(path, format, state, model=model if format == "onnx" else None, fp16=fp16,
                        input_shape=input_shape)


@_keywords_checked
def prune_channels(model: nn.Module, data=None, *, target_macs: float | str | None = None,
                   target_params: float | None = None, criterion: str = "teacher-guided",
                   teacher: nn.Module | None = None, floor: float = 0.1, round_to: int = 1,
                   num_batches: int | None = None,
                   input_shape: tuple | None = None, alpha: float = 0.9, temperature: float = 4.0,
                   kd_loss: str = "ca-kld", kd_std: str = "population", seed: int = 0,
                   target_latency: float | str | None = None, latency_runtime: str = "onnxruntime",
                   latency_batch: int = 64, timer=None, prune_stem: bool = False):
    """Structured pruning, in place: remove whole channels of ``model`` until its MACs shrink by
    ``target_macs`` (2 or "2x"), ``target_params`` of its parameters are gone, or it runs ``target_latency``
    times faster as measured on this machine in ``latency_runtime`` (``onnxruntime`` or ``torch`` eager) at
    ``latency_batch`` images and torch's thread count (:mod:`kdprune.pruning.latency`: a layer latency table,
    cached, then widths allocated by importance per unit of time saved and checked end to end; ``timer``
    replaces the runtime, see :class:`kdprune.pruning.latency.Timer`). Group importance is the
    ``criterion``'s per-weight saliency summed over every weight a channel's removal deletes
    (``teacher-guided``: ``sum_b |w * dL_total,b/dw|``; ``taylor-ce``; ``l1``; ``l2``; ``random``); one global
    ranking; each group keeps ``floor`` of its channels (and, with ``round_to`` > 1, a multiple of it); the
    first conv (unless ``prune_stem``) and the classifier stay whole.
    ``round_to`` stays 1 by default because whether rounded widths pay depends on the runtime (measured on a
    2-core AMD EPYC, ResNet-20 at 32x32, ``benchmarks/latency.py``): in ONNX Runtime widths rounded to 8 are
    faster at 2x and 4x fewer MACs and at batch 1 and 64 (2x: 1.53x against 1.38x at batch 64); in PyTorch eager
    they are faster at batch 64 and not at batch 1 (4x: 1.20x against 1.40x), and on the CPU CIFAR-10 channel
    benchmark (16x16, eager) they were slower at 2x (1.18x against 1.43x). Pass ``round_to=8`` when you deploy
    through ONNX Runtime.
    Returns the plan (removed channels, MACs and parameters before and after); the model is then a plain,
    smaller dense module: retrain it with ``retrain(model, None, ...)``, save ``channel_widths(model)``
    to rebuild it (:func:`kdprune.pruning.structured.apply_widths`)."""
    from kdprune.pruning import structured as S

    crit = S.channel_criterion(criterion)
    check_choice("criterion", crit, S.STRUCTURED_CRITERIA)
    from kdprune.pruning.latency import parse_factor, plan_latency

    if sum(t is not None for t in (target_macs, target_params, target_latency)) != 1:
        raise UserError("give exactly one target: target_macs (e.g. 2 for 2x), target_params (a fraction) or "
                        "target_latency (e.g. 2 for 2x)")
    if target_macs is not None:
        S.parse_macs_target(target_macs)
    elif target_latency is not None:
        parse_factor(target_latency)
    elif not 0.0 < target_params < 1.0:
        raise UserError(f"target_params: a fraction of the parameters to remove in (0, 1), got {target_params}")
    if not 0.0 <= floor < 1.0:
        raise UserError(f"floor: must lie in [0, 1), got {floor}")
    if not isinstance(round_to, int) or round_to < 1:
        raise UserError(f"round_to: must be a whole number >= 1, got {round_to!r}")
    options = S.ChannelOptions(floor, round_to, prune_stem)
    _distillation(alpha, temperature, kd_loss, kd_std)
    if S.needs_teacher(crit) and teacher is None:
        raise UserError("criterion 'teacher-guided' needs a teacher: prune_channels(model, data, teacher=...)")
    if crit in S.DATA_CRITERIA:
        if data is None:
            raise UserError(f"criterion {criterion!r} needs data")
        check_batches(data)
    if data is not None:
        probe_batch(data, "data", {"model": model, "teacher": teacher if S.needs_teacher(crit) else None})
    if input_shape is None:
        if data is None:
            raise UserError("pass input_shape=(channels, height, width) or data to measure the MACs on")
        input_shape = _first_input_shape(data)
    device = next(model.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    scores = S.saliency(model, crit, iter(data) if data is not None else None, teacher=_freeze(teacher),
                        objective=_distillation(alpha, temperature, kd_loss, kd_std),
                        num_batches=score_batch_count(num_batches, len(data)) if data is not None else None, seed=seed)
    if target_latency is not None:
        if timer is None:
            from kdprune.deploy.runtimes import make_timer

            timer = make_timer(latency_runtime, tuple(input_shape), latency_batch)
        plan = plan_latency(model, example, scores, parse_factor(target_latency), timer, options=options)
    else:
        plan = S.plan_channels(model, example, scores, target_params=target_params, options=options,
                               target_macs=S.parse_macs_target(target_macs) if target_macs is not None else None)
    S.prune_channels(model, example, plan)
    return plan


@dataclass
class PruneResult:
    model: nn.Module
    masks: MaskSet
    scores: dict[str, torch.Tensor]
    metrics: dict = field(default_factory=dict)


def prune(student: nn.Module, teacher: nn.Module | None, train_data, sparsity: float, *, test_data=None,
          criterion: str = "teacher-guided", scope: str = "global", retrain: str = "kd", epochs: int = 10,
          retrain_schedule: str = "restart", lr: float | None = None, distill_epochs: int = 0,
          distill_lr: float = 0.1, alpha: float = 0.9, temperature: float = 4.0, kd_loss: str = "ca-kld",
          kd_std: str = "population", num_batches: int | None = None, prune_first: bool = True,
          prune_last: bool = True, progress: bool | None = None, score_rounds: int = 1, layer_floor: float = 0.0,
          score_norm: str = "none", **criterion_options) -> PruneResult:
    """The paper's recipe on your models, in place on ``student``: optionally ``distill_epochs`` of KD
    training (step 2; skip it when the student is already trained), teacher-guided scores (step 3), one
    global threshold at ``sparsity`` (step 4), then ``epochs`` of retraining, ``retrain="kd"`` (under the
    teacher) or ``"plain"`` (step 5), on the ``retrain_schedule`` of ``kdprune run`` (default ``restart``:
    peak ``lr=0.1`` compressed into ``epochs``; see :func:`retrain_optim`). ``criterion`` swaps steps 3-4 for a
    baseline (``magnitude``, ...; ``synflow`` prunes over ``synflow_iterations`` rounds, as the CLI does). Every argument, and one batch of the data through the student and the
    teacher, is checked before any training starts."""
    crit = get_criterion(criterion)
    _check_criterion_options(prune, crit, criterion_options)
    check_choice("retrain", retrain, ("kd", "plain"))
    if retrain == "kd" and teacher is None:
        raise UserError("retrain='kd' needs a teacher (or use retrain='plain')")
    if crit.needs_teacher and teacher is None:
        raise UserError(f"criterion {criterion!r} needs a teacher")
    if distill_epochs and teacher is None:
        raise UserError("distill_epochs needs a teacher")
    if crit.iterative and (score_rounds > 1 or layer_floor or score_norm != "none"):
        raise UserError(f"criterion {criterion!r} prunes over its own rounds: score_rounds, layer_floor and "
                        "score_norm do not apply")
    _check_mask_options(sparsity, scope, layer_floor, score_norm, 2 if crit.iterative else score_rounds)
    params = prunable_parameters(student, prune_first, prune_last)
    MaskOptions(scope, layer_floor, score_norm).check_fits({n: p.numel() for n, p in params.items()}, sparsity)
    _check_training(epochs, lr, "sgd", 0.9, True, 5e-4, "cosine")
    _check_training(distill_epochs, distill_lr, "sgd", 0.9, True, 5e-4, "cosine")
    retrain_optim(retrain_schedule, epochs, lr, distill_epochs or None)
    _distillation(alpha, temperature, kd_loss, kd_std)
    _check_data(train_data, test_data, {"student": student, "teacher": teacher})
    metrics: dict = {}
    if test_data is not None:
        metrics["dense_top1"] = evaluate(student, test_data)["top1"]
    if distill_epochs:
        metrics["distill"] = distill(student, teacher, train_data, epochs=distill_epochs, test_data=test_data,
                                     alpha=alpha, temperature=temperature, kd_loss=kd_loss, kd_std=kd_std,
                                     lr=distill_lr, progress=progress)
        metrics["dense_top1"] = metrics["distill"]["top1"]
    crit_teacher = teacher if crit.needs_teacher else None
    rounds_kw = {k: v for k, v in criterion_options.items() if k in _MASK_ROUNDS}
    options = dict(criterion=criterion, teacher=crit_teacher, alpha=alpha, temperature=temperature, kd_loss=kd_loss,
                   kd_std=kd_std, num_batches=num_batches, prune_first=prune_first, prune_last=prune_last,
                   **{k: v for k, v in criterion_options.items() if k not in _MASK_ROUNDS})
    scores = score(student, train_data, **options)
    if crit.iterative:  # SynFlow builds its masks over its own rounds, as `kdprune run --method synflow` does
        shape = options.get("input_shape") or _first_input_shape(train_data)
        masks = MaskSet(crit.masks_for(student, params, None, sparsity, scope, input_shape=shape, **rounds_kw))
    elif score_rounds > 1:
        masks = progressive_mask(student, train_data, sparsity, rounds=score_rounds, scope=scope,
                                 layer_floor=layer_floor, score_norm=score_norm, first_scores=scores, **options)
    else:
        masks = mask(scores, sparsity, scope=scope, layer_floor=layer_floor, score_norm=score_norm, weights=student)
    masks.bind(student)
    masks.apply_()
    if test_data is not None:
        metrics["pruned_top1"] = evaluate(student, test_data)["top1"]
    r = globals()["retrain"](student, masks, train_data, epochs=epochs, test_data=test_data,
                             teacher=teacher if retrain == "kd" else None, alpha=alpha, temperature=temperature,
                             kd_loss=kd_loss, kd_std=kd_std, retrain_schedule=retrain_schedule, lr=lr,
                             train_epochs=distill_epochs or None, progress=progress, desc=f"retrain ({retrain})")
    metrics.update({"top1": r["top1"], "sparsity": r["sparsity"], "retrain": r})
    return PruneResult(student, masks, scores, metrics)
