"""A recipe: an optional alignment term (a `Method` with a discriminator) plus zero or more losses
on the target's predictions, written on the command line as one `--method` value joined by "+":

    cdan-e          the alignment term alone (golabels' recipes before class-confusion losses)
    mcc             a loss on the target's predictions alone: no discriminator is built
    cdan-e+mcc      both: L = L_cls + trade_off * L_adv + target_loss_weight * L_mcc

A loss on predictions reads the target rows' logits z [B, C] of each step and nothing else; Go-labels
(--domain-labels) act on the alignment term's discriminator only. Adding such a loss is one module
defining a `TargetLoss` and its line in methods/__init__.py's TARGET_LOSSES.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..choices import parse_recipe_name
from .adversarial import Method


@dataclass(frozen=True)
class TargetLoss:
    """A loss on the target's predictions.

    loss: (target logits [B, C], the loss's own options) -> a scalar to minimize.
    options: the config keys this loss reads beyond the shared ones (options.options_of).
    """

    name: str
    summary: str  # one line: --help and the docs
    loss: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]
    options: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Recipe:
    """What `--method` names: the alignment term (source-only's spec when there is none: no
    discriminator) and the losses on the target's predictions, in the order given."""

    name: str
    alignment: Method
    target_losses: tuple[TargetLoss, ...] = ()

    @property
    def adversarial(self) -> bool:
        return self.alignment.adversarial

    @property
    def uses_target(self) -> bool:
        """The run draws target batches: for the discriminator, the target losses or both."""
        return self.adversarial or bool(self.target_losses)

    @property
    def options(self) -> tuple[str, ...]:
        """The config keys the recipe's parts read beyond the shared ones."""
        return tuple(dict.fromkeys((*self.alignment.options, *(name for loss in self.target_losses for name in loss.options))))

    def target_loss(self, target_logits: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """The unweighted sum of the recipe's target losses (0 without any)."""
        total = torch.zeros((), device=target_logits.device)
        for part in self.target_losses:
            total = total + part.loss(target_logits.float(), options)
        return total


def parse_recipe(name: str, methods: dict[str, Method], losses: dict[str, TargetLoss]) -> Recipe:
    """The recipe a `--method` value names, its parts looked up in the registries; ValueError
    saying what is wrong with it (choices.parse_recipe_name, which the config checks without torch)."""
    parsed = parse_recipe_name(name)
    return Recipe(parsed.name, methods[parsed.alignment], tuple(losses[p] for p in parsed.target_losses))
