"""Losses: cross-entropy, Hinton KD, CA-KLD and the training objectives built from them."""

from kdprune.losses.kd import (
    CrossEntropy,
    Distillation,
    Objective,
    ca_kld,
    hinton_kd,
    normalize_logits,
)

__all__ = ["CrossEntropy", "Distillation", "Objective", "ca_kld", "hinton_kd", "normalize_logits"]
