"""The closed sets of values that options take, each declared once.

The option declarations (:mod:`kdprune.experiments.config`, ``choices=``) and the library code that acts on
a value (losses, optimiser, thresholding, the Python API) check against the same tuple, through
:func:`kdprune.errors.check_choice`. This module imports nothing, so ``kdprune --help`` stays fast.
"""

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
KD_LOSSES = ("ca-kld", "kd")  # the paper's CA-KLD on z-scored logits | Hinton's KD
KD_STDS = ("population", "sample")
SCOPES = ("global", "layerwise", "erk", "magnitude-budget")  # global: the paper's; the rest set per-layer budgets
SCOPED_RECIPES = ("post-training", "at-init", "imp", "epsd", "channel")  # the recipes whose masks --scope shapes
SCORE_NORMS = ("none", "l2", "mean")
SCORE_FORMS = ("taylor", "grad", "taylor2")
STRUCTURES = ("unstructured", "channel")
RETRAIN_SCHEDULES = ("finetune", "lr-rewind", "restart")
RETRAIN = ("plain", "kd", "both")
COLT_HEADS = ("own", "shared")
STAGES = ("teacher", "student", "dense-ce")  # the shared stages of a sweep (kdprune.methods.context.Stages)
LATENCY_RUNTIMES = ("onnxruntime", "torch")  # where a latency target is measured (deploy.runtimes)
DEFAULT_ALPHA = 0.9  # the paper's weight of the distillation term in L_total (a result row names any other)
