"""The dense references as result rows: the student trained with plain CE and the student trained under the
teacher with ``L_total`` (the paper's step 2), nothing pruned.

``--method dense`` records one row per regime at sparsity 0: ``plain`` is the dense CE student, ``kd`` the
dense KD student. Their difference is what the teacher adds to the student's own training, before any
pruning (the teacher-strength ladder, :mod:`kdprune.experiments.ladder`, sets it against the teacher's lead).
Both are the sweep's shared stages, so a dense run beside the pruning runs of the same seed trains nothing
new. The CE student depends on no teacher: its row has no ``teacher_top1`` and no teacher cost.
"""

from __future__ import annotations

from kdprune.methods.context import RunContext, alpha_variant
from kdprune.methods.recipe import DENSE_CE, STUDENT, TEACHER, Recipe, regimes_of, teacher_epochs_of
from kdprune.methods.result import Cost
from kdprune.pruning.masks import sparsity_report
from kdprune.pruning.prunable import prunable_parameters


def _stage(regime: str) -> str:
    return STUDENT if regime == "kd" else DENSE_CE


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    for regime in ctx.regimes:
        model, m = ctx.stages.get(_stage(regime))
        params = prunable_parameters(model, cfg.prune_first, cfg.prune_last)
        stage_dir = ctx.stages.folder(_stage(regime))
        row = {**m, "sparsity": sparsity_report(model, list(params)), "epochs": m.get("epochs", cfg.student_epochs)}
        cost = ctx.teacher_cost(regime) + Cost.of(m)
        ctx.record(0.0, regime, row, None, cost, stage_dir, variant=alpha_variant(cfg) if regime == "kd" else "")


class DenseRecipe(Recipe):
    """Its stages are the dense students themselves: the CE one for ``plain``, the KD one (and so the
    teacher) for ``kd``; each row's reference is its own stage."""

    def stages(self, cfg) -> tuple[str, ...]:
        wanted = {"plain": (DENSE_CE,), "kd": (TEACHER, STUDENT), "both": (TEACHER, STUDENT, DENSE_CE)}
        return wanted[cfg.retrain]

    def reference_stage(self, regime: str = "plain") -> str:
        return _stage(regime)


RECIPE = DenseRecipe("dense", run, pays_for_teacher=False,
                     epochs=lambda cfg: cfg.student_epochs * regimes_of(cfg)
                     + (teacher_epochs_of(cfg) if cfg.retrain != "plain" else 0))
