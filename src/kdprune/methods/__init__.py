"""Methods: each a short recipe (criterion + schedule + loss) composed from the shared parts.

* ``post-training`` (:mod:`kdprune.methods.teacher_guided`): the paper's pipeline. Prune the KD-trained
  dense student once with the criterion, then retrain (plain and/or KD). Methods: teacher-guided (the
  paper's), magnitude, random.
* ``at-init`` (:mod:`kdprune.methods.at_init`): prune the student at initialisation with the criterion,
  then train the sparse network for ``--student-epochs`` (plain and/or KD). Methods: snip, grasp, synflow.
* ``imp``: Lottery Ticket / iterative magnitude pruning with rewinding (:mod:`kdprune.methods.imp`).
* ``colt``: cyclic overlapping lottery tickets (:mod:`kdprune.methods.colt`).
* ``epsd``: early pruning with self-distillation, its "Simple" twin and EPG (:mod:`kdprune.methods.epsd`).

Every recipe is a function of a :class:`kdprune.methods.context.RunContext`.
"""

from kdprune.methods.registry import METHODS, Method, get_method


def _recipes() -> dict:
    from kdprune.methods import at_init, colt, epsd, imp, teacher_guided

    return {"post-training": teacher_guided.run, "at-init": at_init.run, "imp": imp.run_imp, "colt": colt.run_colt,
            "epsd": epsd.run_epsd}


class _Recipes(dict):
    """recipe name -> function of a RunContext (imported on first use)."""

    def __missing__(self, key):
        self.update(_recipes())
        return dict.__getitem__(self, key)


RECIPES = _Recipes()

__all__ = ["METHODS", "Method", "RECIPES", "get_method"]
