"""The method registry: name -> (recipe object, criterion, paper).

A method is a recipe (:class:`~kdprune.methods.recipe.Recipe`, defined beside its module's ``run``) with a
criterion and, for the EPSD family, a self-distillation loss. Everything that differs between methods is an
attribute here, so no other module tests a method's name to decide what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdprune.errors import UserError
from kdprune.methods import at_init, colt, dense, epsd, imp, structured, teacher_guided
from kdprune.methods.recipe import Recipe

PAPER_METHOD = "teacher-guided"  # the method the paper proposes: reports draw it first and compare to it


@dataclass(frozen=True)
class Method:
    name: str
    recipe: Recipe
    criterion: str
    description: str
    paper: str
    self_distillation: str | None = None  # the EPSD family's SD loss (cskd, pskd, dlb; None for EPG)


def _m(name, recipe, criterion, description, paper, sd=None):
    return name, Method(name, recipe, criterion, description, paper, sd)


POST, AT_INIT, EPSD = teacher_guided.RECIPE, at_init.RECIPE, epsd.RECIPE

METHODS: dict[str, Method] = dict([
    _m("teacher-guided", POST, "teacher-guided",
       "one-shot pruning of the KD student by gradient saliency of alpha*CA-KLD + (1-alpha)*CE, then retraining",
       "Alim et al., Teacher-Guided One-Shot Pruning via Context-Aware KD, IEEE BigData 2025"),
    _m("magnitude", POST, "magnitude", "one-shot |w| pruning of the KD student, then retraining",
       "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015"),
    _m("random", POST, "random", "one-shot random pruning of the KD student, then retraining",
       "Blalock et al., What is the State of Neural Network Pruning?, MLSys 2020"),
    _m("dense", dense.RECIPE, "none",
       "no pruning: the dense students as rows at sparsity 0, plain = trained with CE, kd = under the teacher "
       "with L_total (the paper's step 2); the references the teacher's effect is measured by",
       "Hinton et al., Distilling the Knowledge in a Neural Network, 2015 (the KD student); Alim et al. 2025"),
    _m("snip", AT_INIT, "snip", "SNIP at initialisation, then sparse training",
       "Lee et al., SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR 2019"),
    _m("grasp", AT_INIT, "grasp", "GraSP at initialisation, then sparse training",
       "Wang et al., Picking Winning Tickets Before Training by Preserving Gradient Flow, ICLR 2020"),
    _m("synflow", AT_INIT, "synflow", "iterative SynFlow at initialisation (data-free), then sparse training",
       "Tanaka et al., Pruning neural networks without any data by iteratively conserving synaptic flow, NeurIPS 2020"),
    _m("imp", imp.RECIPE, "magnitude",
       "Lottery Ticket / IMP: train, prune --rate of the remaining weights by global magnitude, rewind, repeat",
       "Frankle & Carbin, The Lottery Ticket Hypothesis, ICLR 2019; Frankle et al., "
       "Linear Mode Connectivity and the Lottery Ticket Hypothesis (rewinding), ICML 2020"),
    _m("colt", colt.RECIPE, "magnitude",
       "cyclic overlapping lottery tickets: class-partitioned tickets per round, mask intersection, rewind",
       "Hossain et al., COLT: Cyclic Overlapping Lottery Tickets for Faster Pruning of CNNs, 2025"),
    _m("epg", EPSD, "snip",
       "early pruning: prune after --epsd-warmup-epochs by CE saliency |w*dCE/dw|, then CE training "
       "(kdprune's reading of the paper's EPG baseline; the EPSD recipe without self-distillation)",
       "EPG, named by Alim et al. 2025 (reference not retrievable here); recipe as in Chen et al., EPSD, AAAI 2024"),
    *[_m(f"{variant}-{sd}", EPSD, "sd-saliency" if variant == "epsd" else "snip",
         (f"EPSD: prune after --epsd-warmup-epochs by the saliency of the {label} loss, then {label} training"
          if variant == "epsd" else
          f"Simple: prune after --epsd-warmup-epochs by CE saliency |w*dCE/dw|, then {label} training"),
         f"Chen et al., EPSD: Early Pruning with Self-Distillation, AAAI 2024; {paper}", sd)
      for sd, label, paper in (("cskd", "CS-KD", "Yun et al., CS-KD, CVPR 2020"),
                               ("pskd", "PS-KD", "Kim et al., PS-KD, ICCV 2021"),
                               ("dlb", "DLB", "Shen et al., DLB, CVPR 2022"))
      for variant in ("simple", "epsd")],
])


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def method_or_structured(cfg) -> Method:
    """The run's method; with ``--structure channel`` the channel recipe (its own criteria included)."""
    if getattr(cfg, "structure", "unstructured") == "channel":
        return Method(cfg.method, structured.RECIPE, cfg.method, "channel pruning by group importance, then retraining",
                      "Fang et al., DepGraph, CVPR 2023 (surgery); importance as the method's criterion")
    return get_method(cfg.method)
