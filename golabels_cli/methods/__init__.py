"""The adaptation methods: one module each, its loss formula in its docstring, and these registries.

A run's `--method` is a recipe (recipe.py): an optional alignment term, a `Method` spec
(adversarial.py: what the discriminator sees, the sample weights, an extra loss, the model
variants it needs and its own options), plus zero or more losses on the target's predictions,
each a `TargetLoss`. Training, model building, checkpoints, metrics rows and the config read the
specs, never a name. Adding an alignment method is one module here and its line in REGISTRY;
adding a loss on predictions is one module and its line in TARGET_LOSSES; each with its docs
(docs/methods.md) and tests (docs/architecture.md lists the files).
"""

import functools

from . import asan, bnm, cdan, cdan_e, dann, dann_e, gvb, im, mcc, source_only
from .adversarial import (CDAN_MAPS, REFERENCE_HORIZON, REFERENCE_LR_GAMMA, SCHEDULES, Adversary, Batch, ExtraLossInputs, Method,
                          MultilinearMap, adversarial_loss, entropy, entropy_weights, grad_reverse, grl_coeff,
                          randomized_map)
from .asan import spectral_alignment
from .gvb import gvb_weights
from .recipe import Recipe, TargetLoss, parse_recipe

# In the order --help lists them: the default first, the baseline last.
REGISTRY: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (cdan_e, cdan, dann, dann_e, gvb, asan, source_only)}
METHODS = tuple(REGISTRY)
BASELINE = source_only.METHOD.name
# Losses on the target's predictions, alone (`--method mcc`) or after an alignment term (`cdan-e+mcc`).
TARGET_LOSSES: dict[str, TargetLoss] = {m.LOSS.name: m.LOSS for m in (mcc, bnm, im)}
RECIPE_PARTS = (*METHODS, *TARGET_LOSSES)


@functools.lru_cache(maxsize=64)  # a recipe is immutable, and the lr schedule asks for it every step
def get_recipe(name: str) -> Recipe:
    """The recipe a --method value names (e.g. "cdan-e+mcc"); ValueError saying what is wrong with it."""
    return parse_recipe(name, REGISTRY, TARGET_LOSSES)


def get_method(name: str) -> Method:
    """The alignment term of a recipe (source-only's spec when it has none); ValueError for an unknown one."""
    return get_recipe(name).alignment


__all__ = ["BASELINE", "CDAN_MAPS", "METHODS", "RECIPE_PARTS", "REFERENCE_HORIZON", "REFERENCE_LR_GAMMA", "REGISTRY", "SCHEDULES",
           "TARGET_LOSSES", "Adversary", "Batch", "ExtraLossInputs", "Method", "MultilinearMap", "Recipe", "TargetLoss",
           "adversarial_loss", "entropy", "entropy_weights", "get_method", "get_recipe", "grad_reverse", "grl_coeff", "gvb_weights",
           "randomized_map", "spectral_alignment"]
