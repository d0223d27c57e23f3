"""Progressive scoring (an option beside the paper's one-shot step, not part of it).

Reach the target sparsity ``s`` in ``R`` score -> mask steps on an exponential schedule, density after
step ``k`` = ``(1 - s) ** (k / R)``: each step scores the student with the current mask applied (pruned
weights zero), pruned weights score below every kept one so the masks are nested, and no training
happens in between. It costs ``R`` times the scoring of one-shot pruning; with ``R = 1`` it is exactly
the one-shot mask. (The same schedule as iterative SynFlow, applied to any scores.)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
import torch.nn as nn

from kdprune.pruning.threshold import MaskOptions, check_rounds, nest, normalize_scores, prune_masks


def schedule(sparsity: float, rounds: int) -> list[float]:
    return [1.0 - (1.0 - sparsity) ** (k / rounds) for k in range(1, rounds + 1)]


def progressive_masks(score_masked: Callable[[dict[str, torch.Tensor] | None], dict[str, torch.Tensor]],
                      sparsity: float, rounds: int, options: MaskOptions = MaskOptions()) -> dict[str, torch.Tensor]:
    """``score_masked(masks)`` returns the scores of the model with ``masks`` applied (``None``: dense).
    Scores are normalised (``options.score_norm``) before already-pruned weights are set below every kept
    one (:func:`~kdprune.pruning.threshold.nest`)."""
    check_rounds(options.scope, rounds)
    masks, normalised = None, replace(options, score_norm="none")
    for s_k in schedule(sparsity, rounds):
        masks = prune_masks(nest(normalize_scores(score_masked(masks), options.score_norm), masks), s_k, normalised)
    return masks


def rescoring(model: nn.Module, dense_state: dict, score: Callable[[], dict[str, torch.Tensor]],
              first: dict[str, torch.Tensor] | None = None) -> Callable:
    """The ``score_masked`` of :func:`progressive_masks` for ``model``: restore ``dense_state``, apply the
    masks (none in round 1, where ``first``, the dense model's scores when already computed, is reused),
    then ``score()``. Restore ``dense_state`` once the masks are built."""
    from kdprune.pruning.masks import MaskSet

    def score_masked(masks):
        if masks is None and first is not None:
            return first
        model.load_state_dict(dense_state)
        if masks is not None:
            MaskSet(masks).bind(model).apply_()
        return score()

    return score_masked
