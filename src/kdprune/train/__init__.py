"""One training engine for dense, distillation and sparse (masked) training."""

from kdprune.train.engine import Callback, OptimSpec, Trainer, TrainingDiverged, evaluate

__all__ = ["Callback", "OptimSpec", "Trainer", "TrainingDiverged", "evaluate"]
