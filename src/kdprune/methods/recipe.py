"""A recipe as an object: what a method runs, which shared stages it needs, what it costs, how the teacher counts.

Each recipe module (:mod:`~kdprune.methods.teacher_guided`, :mod:`~kdprune.methods.at_init`,
:mod:`~kdprune.methods.imp`, :mod:`~kdprune.methods.colt`, :mod:`~kdprune.methods.epsd`,
:mod:`~kdprune.methods.structured`) defines its ``RECIPE`` beside its ``run``; the method registry
(:mod:`~kdprune.methods.registry`) names, for each method, its recipe object. The sweep asks the recipe for
its shared stages and its cost, the run context asks it whether the teacher's training is part of a row's
cost; nothing tests a method's name to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kdprune.choices import STAGES

TEACHER, STUDENT, DENSE_CE = STAGES  # the shared stages (kdprune.methods.context.Stages)


def teacher_epochs_of(cfg) -> int:
    """The teacher's training epochs a run pays: none for a teacher given by ``--teacher-checkpoint``."""
    return 0 if getattr(cfg, "teacher_checkpoint", None) else cfg.teacher_epochs


def regimes_of(cfg) -> int:
    """How many retraining regimes a run trains (``--retrain both``: plain and kd)."""
    return 2 if cfg.retrain == "both" else 1


@dataclass(frozen=True)
class Recipe:
    name: str
    run: Callable  # run(ctx: RunContext) -> None: train, prune and record every result of the run
    #: the recipe's student learns from the teacher in every regime, so the teacher's training is part of
    #: every row's cost (post-training recipes); otherwise only the kd regime uses (and pays for) it
    pays_for_teacher: bool
    #: training epochs of a run before stages are shared (``kdprune sweep --dry-run``)
    epochs: Callable[[object], int]
    #: prune-retrain cycles (IMP, COLT): the iterative references one-shot pruning is measured against
    iterative: bool = False
    #: the regime a recipe trains in when it takes no --retrain (EPSD: its own self-distillation loss)
    uses_retrain: bool = True
    #: check(cfg, env): what only the recipe knows is out of reach, one line before the run's folder is written
    check: Callable[[object, object], None] | None = None

    def stages(self, cfg) -> tuple[str, ...]:
        """The shared stages a run needs: the teacher and the KD student for a recipe that prunes the KD
        student, else the dense CE student (IMP's round 0, the others' reference) and, for a kd regime, the
        teacher."""
        if self.pays_for_teacher:
            return TEACHER, STUDENT
        if self.uses_retrain and cfg.retrain in ("kd", "both"):
            return DENSE_CE, TEACHER
        return (DENSE_CE,)

    def reference_stage(self, regime: str = "plain") -> str:
        """The stage whose top-1 is a row's ``dense_top1`` (in ``regime``): the student that is pruned, or
        the dense CE student of the same schedule."""
        return STUDENT if self.pays_for_teacher else DENSE_CE
