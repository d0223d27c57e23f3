"""kdprune: teacher-guided one-shot pruning with context-aware knowledge distillation.

The Python API (:mod:`kdprune.api`) is importable from here: ``kdprune.prune``, ``score``, ``mask``,
``retrain``, ``distill``, ``evaluate``, ``export``, and ``kdprune.TensorLoader``. It is loaded on first use, so ``import kdprune`` and
the command line start without importing torch first.
"""

__version__ = "0.2.0"

_API = ("PruneResult", "distill", "evaluate", "export", "mask", "progressive_mask", "prune", "prune_channels", "retrain",
        "retrain_optim", "score")
__all__ = ["__version__", "TensorLoader", *_API]


def __getattr__(name: str):
    if name == "TensorLoader":
        from kdprune.data import TensorLoader

        return TensorLoader
    if name in _API:
        from kdprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdprune' has no attribute {name!r}")
