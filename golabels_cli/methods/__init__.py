"""The adaptation methods: one module each, its loss formula in its docstring, and the registries.

A run's `--method` is a recipe (recipe.py): an optional alignment term, a `Method` spec
(adversarial.py: what the discriminator sees, the sample weights, an extra loss, the model
variants it needs and its own options), plus zero or more losses on the target, each a
`TargetLoss`. The `Objective` (objective.py) is a recipe built once with its modules and
weights: one call on a step's output returns the loss, in golabels' loop or anyone's. Training,
model building, checkpoints, metrics rows and the config read the specs, never a name. Adding an
alignment method is one module here and its line in registry.py's REGISTRY; adding a loss on the
target is one module and its line in choices.TARGET_LOSSES; each with its docs (docs/methods.md)
and tests (docs/architecture.md lists the files).
"""

from .adversarial import (CDAN_MAPS, REFERENCE_HORIZON, REFERENCE_LR_GAMMA, SCHEDULES, Adversary, Batch, ExtraLossInputs, GradientProbe,
                          Method, MultilinearMap, adversarial_loss, entropy, entropy_weights, grad_reverse, grl_coeff, randomized_map)
from .asan import spectral_alignment
from .bank import TargetBank
from .gvb import gvb_weights
from .objective import Loss, Objective, StepOutput
from .recipe import Recipe, TargetLoss, parse_recipe
from .registry import BASELINE, METHODS, REGISTRY, TARGET_LOSSES, get_method, get_recipe

__all__ = ["BASELINE", "CDAN_MAPS", "METHODS", "REFERENCE_HORIZON", "REFERENCE_LR_GAMMA", "REGISTRY", "SCHEDULES", "TARGET_LOSSES",
           "Adversary", "Batch", "ExtraLossInputs", "GradientProbe", "Loss", "Method", "MultilinearMap", "Objective", "Recipe",
           "StepOutput", "TargetBank", "TargetLoss", "adversarial_loss", "entropy", "entropy_weights", "get_method", "get_recipe",
           "grad_reverse", "grl_coeff", "gvb_weights", "parse_recipe", "randomized_map", "spectral_alignment"]
