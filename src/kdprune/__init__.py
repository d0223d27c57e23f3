"""kdprune: teacher-guided one-shot pruning with context-aware knowledge distillation.

The Python API (:mod:`kdprune.api`) is importable from here: ``kdprune.prune``, ``score``, ``mask``,
``retrain``, ``distill``, ``evaluate``, ``export``. It is loaded on first use, so ``import kdprune`` and
the command line start without importing torch first.
"""

__version__ = "0.1.0"

_API = ("PruneResult", "distill", "evaluate", "export", "mask", "progressive_mask", "prune", "prune_channels", "retrain",
        "score")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from kdprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdprune' has no attribute {name!r}")
