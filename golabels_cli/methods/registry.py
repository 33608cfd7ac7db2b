"""The registries: the alignment terms by name, the target losses by name (loaded from the
modules choices.TARGET_LOSSES names), and the recipe a `--method` value names."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping

from .. import choices
from . import asan, cdan, cdan_e, dann, dann_e, gvb, source_only
from .adversarial import Method
from .recipe import Recipe, TargetLoss, parse_recipe

# In the order --help lists them: the default first, the baseline last.
REGISTRY: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (cdan_e, cdan, dann, dann_e, gvb, asan, source_only)}
METHODS = tuple(REGISTRY)
BASELINE = source_only.METHOD.name


class _TargetLosses(Mapping):
    """{name: TargetLoss} of choices.TARGET_LOSSES, each module imported when first named."""

    def __getitem__(self, name: str) -> TargetLoss:
        return importlib.import_module(choices.TARGET_LOSSES[name]).LOSS

    def __iter__(self) -> Iterator[str]:
        return iter(choices.TARGET_LOSSES)

    def __len__(self) -> int:
        return len(choices.TARGET_LOSSES)


# Losses on the target, alone (`--method mcc`) or after an alignment term (`cdan-e+mcc`).
TARGET_LOSSES: Mapping[str, TargetLoss] = _TargetLosses()


@functools.lru_cache(maxsize=64)  # a recipe is immutable, and the lr schedule asks for it every step
def get_recipe(name: str) -> Recipe:
    """The recipe a --method value names (e.g. "cdan-e+mcc"); ValueError saying what is wrong with it."""
    return parse_recipe(name, REGISTRY, TARGET_LOSSES)


def get_method(name: str) -> Method:
    """The alignment term of a recipe (source-only's spec when it has none); ValueError for an unknown one."""
    return get_recipe(name).alignment
