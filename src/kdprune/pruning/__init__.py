"""Pruning: which weights are prunable, importance criteria, thresholds and masks."""

from kdprune.pruning.criteria import CRITERIA, compute_scores
from kdprune.pruning.masks import MaskSet, sparsity_report
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.threshold import global_masks, layerwise_masks

__all__ = ["CRITERIA", "MaskSet", "compute_scores", "global_masks", "layerwise_masks",
           "prunable_parameters", "sparsity_report"]
