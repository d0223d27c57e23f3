"""Methods: each a short recipe (criterion + schedule + loss) composed from the shared parts.

* ``post-training``: the paper's pipeline. Prune the KD-trained dense student once with the criterion,
  then retrain (plain and/or KD). Methods: teacher-guided (the paper's), magnitude, random.
* ``at-init``: prune the student at initialisation with the criterion, then train the sparse network
  for ``--student-epochs`` (plain and/or KD). Methods: snip, grasp, synflow.
* ``imp``: Lottery Ticket / iterative magnitude pruning with rewinding (see :mod:`kdprune.methods.imp`).
* ``colt``: cyclic overlapping lottery tickets (see :mod:`kdprune.methods.colt`).
"""

from kdprune.methods.registry import METHODS, Method, get_method

__all__ = ["METHODS", "Method", "get_method"]
