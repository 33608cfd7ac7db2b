"""A recipe: an optional alignment term plus zero or more losses on the target, written on the
command line as one `--method` value joined by "+":

    cdan-e          the alignment term alone (golabels' recipes before class-confusion losses)
    mcc             a loss on the target's predictions alone: no discriminator is built
    cdan-e+mcc      both: L = L_cls + trade_off * L_adv + target_loss_weight * L_mcc

A target loss reads the step's whole output (StepOutput: features, logits, the source
rows' labels), so a loss on the target's predictions, its features or pseudo-labels made from
them is one module defining a `TargetLoss` as `LOSS`, and its line in choices.TARGET_LOSSES.
Go-labels (--domain-labels) act on the alignment term's discriminator only. The objective
(objective.py) is the recipe built with its weights and modules.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..choices import RecipeName, parse_recipe_name
from .adversarial import Method


@functools.lru_cache(maxsize=8)
def domain_labels(sources: int, rows: int, device: torch.device) -> torch.Tensor:
    """1 for the first `sources` rows, 0 for the rest: made once per batch shape, not at every step
    (on a GPU, each step's tensor would be launches of its own). Never written to."""
    return (torch.arange(rows, device=device) < sources).float()


@dataclass(frozen=True)
class StepOutput:
    """What one step's forward pass gives the objective: the rows of a source batch, then (if the
    recipe uses the target) as many target rows.

    features: bottleneck features [N, F]; logits [N, C]; source_labels [B] (B <= N source rows);
    row_weights [N] (or [B] without target rows) multiply each row's loss, or None; target_index
    [N - B]: which image of the target set each target row is (a memory of the target set reads
    and writes its rows by it), or None; bank: the objective's TargetBank (bank.py), or None.
    """

    features: torch.Tensor
    logits: torch.Tensor
    source_labels: torch.Tensor
    row_weights: torch.Tensor | None = None
    target_index: torch.Tensor | None = None
    bank: Any = None

    @property
    def sources(self) -> int:
        return len(self.source_labels)

    @property
    def has_target(self) -> bool:
        return len(self.logits) > self.sources

    @property
    def domain(self) -> torch.Tensor:
        """The raw domain labels: 1 for the source rows, 0 for the target rows. Shape [N]."""
        return domain_labels(self.sources, len(self.logits), self.logits.device)

    @property
    def target_logits(self) -> torch.Tensor:
        return self.logits[self.sources:].float()

    @property
    def target_features(self) -> torch.Tensor:
        return self.features[self.sources:]


@dataclass(frozen=True)
class TargetLoss:
    """A loss on the target.

    loss: (the step's output, the loss's own options) -> a scalar to minimize; most read
        `out.target_logits` [B, C], a loss on features `out.target_features` [B, F].
    options: the config keys this loss reads beyond the shared ones (options.options_of).
    bank: whether it keeps a memory of the whole target set (bank.TargetBank, `out.bank`), which
        the objective then holds and the run fills before its first step and saves with its state.
    """

    name: str
    summary: str  # one line: --help and the docs
    loss: Callable[[StepOutput, dict[str, Any]], torch.Tensor]
    options: tuple[str, ...] = field(default=())
    bank: bool = False


@dataclass(frozen=True)
class Recipe:
    """What `--method` names (its `names`, the torch-free parse that also says whether it is
    adversarial and uses the target): the alignment term (source-only's spec when there is none:
    no discriminator) and the losses on the target, in the order given."""

    names: RecipeName
    alignment: Method
    target_losses: tuple[TargetLoss, ...] = ()

    @property
    def name(self) -> str:
        return self.names.name

    @property
    def adversarial(self) -> bool:
        return self.names.adversarial

    @property
    def uses_target(self) -> bool:
        return self.names.uses_target

    @property
    def options(self) -> tuple[str, ...]:
        """The config keys the recipe's parts read beyond the shared ones."""
        return tuple(dict.fromkeys((*self.alignment.options, *(name for loss in self.target_losses for name in loss.options))))


def parse_recipe(name: str, methods: dict[str, Method], losses: Mapping[str, TargetLoss]) -> Recipe:
    """The recipe a `--method` value names, its parts looked up in the registries; ValueError
    saying what is wrong with it (choices.parse_recipe_name, which the config checks without torch)."""
    parsed = parse_recipe_name(name)
    return Recipe(parsed, methods[parsed.alignment], tuple(losses[p] for p in parsed.target_losses))
