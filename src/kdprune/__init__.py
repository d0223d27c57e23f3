"""kdprune: teacher-guided one-shot pruning with context-aware knowledge distillation."""

__version__ = "0.1.0"
