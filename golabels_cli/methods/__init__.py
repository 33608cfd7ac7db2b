"""The adaptation methods: one module each, its loss formula in its docstring, and this registry.

Every method is a `Method` spec (adversarial.py): what the discriminator sees, the sample weights,
an extra loss, the model variants it needs and its own options. Training, model building,
checkpoints, metrics rows and the config read the spec, never the method's name. Adding a method
is one module here, its line in REGISTRY, its docs (docs/methods.md) and its tests
(docs/architecture.md lists the files).
"""

from . import asan, cdan, cdan_e, dann, dann_e, gvb, source_only
from .adversarial import (CDAN_MAPS, REFERENCE_HORIZON, REFERENCE_LR_GAMMA, SCHEDULES, Adversary, Batch, ExtraLossInputs, Method,
                          MultilinearMap, adversarial_loss, entropy_weights, grad_reverse, grl_coeff, randomized_map)
from .asan import spectral_alignment
from .gvb import gvb_weights

# In the order --help lists them: the default first, the baseline last.
REGISTRY: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (cdan_e, cdan, dann, dann_e, gvb, asan, source_only)}
METHODS = tuple(REGISTRY)


def get_method(name: str) -> Method:
    """The spec of a method by name; ValueError for an unknown one (config validation names the choices first)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


__all__ = ["CDAN_MAPS", "METHODS", "REFERENCE_HORIZON", "REFERENCE_LR_GAMMA", "REGISTRY", "SCHEDULES", "Adversary", "Batch",
           "ExtraLossInputs", "Method", "MultilinearMap", "adversarial_loss", "entropy_weights", "get_method", "grad_reverse",
           "grl_coeff", "gvb_weights", "randomized_map", "spectral_alignment"]
