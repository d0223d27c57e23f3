"""Methods: each a short recipe (criterion + schedule + loss) composed from the shared parts.

* ``post-training`` (:mod:`kdprune.methods.teacher_guided`): the paper's pipeline. Prune the KD-trained
  dense student once with the criterion, then retrain (plain and/or KD). Methods: teacher-guided (the
  paper's), magnitude, random.
* ``at-init`` (:mod:`kdprune.methods.at_init`): prune the student at initialisation with the criterion,
  then train the sparse network for ``--student-epochs`` (plain and/or KD). Methods: snip, grasp, synflow.
* ``imp``: Lottery Ticket / iterative magnitude pruning with rewinding (:mod:`kdprune.methods.imp`).
* ``colt``: cyclic overlapping lottery tickets (:mod:`kdprune.methods.colt`).
* ``epsd``: early pruning with self-distillation, its "Simple" twin and EPG (:mod:`kdprune.methods.epsd`).
* ``channel``: the paper's recipe with whole channels (``--structure channel``, :mod:`kdprune.methods.structured`).

Every recipe is a :class:`~kdprune.methods.recipe.Recipe` object beside its module's ``run``, a function of a
:class:`kdprune.methods.context.RunContext`; the registry maps each method name to its recipe.
"""

from kdprune.methods.recipe import Recipe
from kdprune.methods.registry import METHODS, PAPER_METHOD, Method, get_method, method_or_structured

__all__ = ["METHODS", "Method", "PAPER_METHOD", "Recipe", "get_method", "method_or_structured"]
