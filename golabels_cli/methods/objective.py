"""A recipe as one object: the loss a training step minimizes, built once, usable in any loop.

    L = CE(source logits, source labels) + trade_off * L_adv + L_extra + target_loss_weight * L_target
        [+ teacher_weight * L_teacher]

L_adv and L_extra are the alignment term's (adversarial.py: its discriminator's loss under the
domain targets of `domain_labels`, and its own extra loss); L_target is the sum of the recipe's
losses on the target (recipe.py), each reading the step's whole output. With per-row weights
(--label-shift-weights) each source row weighs its class's weight in CE and L_adv. A run taught
by a teacher (--teacher, training/teacher.py) adds L_teacher = mean_i CE(R_i, p_i), the
cross-entropy of its target rows' predictions p_i to the teacher's refined soft labels R_i.

    objective = Objective.of("cdan-e+mcc", num_classes=31, feature_dim=256)
    optimizer = torch.optim.SGD([*model.parameters(), *objective.parameters()], lr=0.01, momentum=0.9)
    for step, ((xs, ys), (xt, _)) in enumerate(zip(source, target)):
        logits, features = model(torch.cat([xs, xt]))
        loss, logged, _ = objective(StepOutput(features, logits, ys), grl_coeff(step, 1000))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

The step of golabels' own loop (training/step.py) is that call between its forward and backward.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..options import FIELDS, declaration, option_defaults, value_kind
from .adversarial import Adversary, Batch, GradientProbe, Method, MultilinearMap, adversarial_loss
from .bank import TargetBank
from .recipe import StepOutput
from .registry import get_recipe


class Loss(NamedTuple):
    """What an Objective call returns: the loss to minimize, its detached parts and statistics (on
    the device), and the probe of the adversarial gradient (None without a discriminator), whose
    `norm` the backward pass fills."""

    loss: torch.Tensor
    logged: dict[str, torch.Tensor]
    probe: GradientProbe | None


class Objective(nn.Module):
    """The loss of a recipe, its parts and weights fixed at construction; an nn.Module whose
    submodules are the discriminator, CDAN's map and the target bank, so `.to`, `.train`,
    `.state_dict` and `.parameters()` (the discriminator's) work as on any module.

    Args:
        alignment: the alignment term's spec (source-only's: no discriminator).
        discriminator, multilinear: the modules it trains and reads (CDAN's map), or None.
        head: the classifier's head (GVB's bridge reads it): the model's, so not a submodule here.
        target_losses: the recipe's losses on the target (recipe.TargetLoss).
        trade_off, target_loss_weight: the weights of L_adv and of L_target.
        domain_labels: the discriminator's targets (domain_labels.MODES: "go", "fixed", ...).
        options: the parts' own options by config key (mcc_temperature, ...).
        bank: the memory of the target set a neighbourhood loss keeps (bank.py), or None.
        teacher: [N, C], a teacher's soft label of each target image (--teacher), weighted by
            teacher_weight; a buffer, or None.

    Inputs (forward): a StepOutput (the step's logits and features, source rows first, and the
    source labels) and the reversal coefficient. Shape: the loss is a scalar (see Loss).
    """

    def __init__(self, alignment: Method, discriminator: nn.Module | None = None, multilinear: MultilinearMap | None = None,
                 head: nn.Module | None = None, target_losses: tuple = (), trade_off: float = 1.0, target_loss_weight: float = 1.0,
                 domain_labels: str = "fixed", options: dict[str, Any] | None = None, bank: TargetBank | None = None,
                 teacher: torch.Tensor | None = None, teacher_weight: float = 1.0):
        super().__init__()
        self.alignment, self.discriminator, self.multilinear, self.bank = alignment, discriminator, multilinear, bank
        self._head = (head,)  # in a tuple: the classifier's own module, kept out of this one's parameters and state
        self.target_losses, self.trade_off, self.target_loss_weight = tuple(target_losses), trade_off, target_loss_weight
        self.domain_labels, self.options, self.teacher_weight = domain_labels, dict(options or {}), teacher_weight
        self.register_buffer("teacher", teacher)

    @property
    def head(self) -> nn.Module | None:
        return self._head[0]

    def replaced(self, **changes: Any) -> "Objective":
        """A new objective with the same parts but `changes` (e.g. a DDP-wrapped discriminator, a teacher)."""
        parts = {name: getattr(self, name) for name in ("alignment", "discriminator", "multilinear", "head", "target_losses", "trade_off",
                                                         "target_loss_weight", "domain_labels", "options", "bank", "teacher",
                                                         "teacher_weight")}
        return Objective(**{**parts, **changes})

    @classmethod
    def of(cls, recipe: str, num_classes: int, feature_dim: int, head: nn.Module | None = None, *, trade_off: float = 1.0,
           target_loss_weight: float = 1.0, domain_labels: str = "fixed", cdan_map: str = "auto", target_size: int | None = None,
           **options: Any) -> "Objective":
        """The objective of a --method value (e.g. "cdan-e+mcc") with a new discriminator of the
        method's reference kind; `options` override the parts' own options' defaults (e.g.
        mcc_temperature=2.5). A neighbourhood loss (aad) needs `target_size`, the number of target
        images its bank remembers, fill it (objective.bank.fill) before the first step, and the
        step's target rows' indices (StepOutput.target_index). For a loop outside golabels."""
        if not isinstance(recipe, str):
            raise InputError(f"recipe must be a --method value such as 'cdan-e+mcc', got {type(recipe).__name__}")
        try:
            spec = get_recipe(recipe)
        except ValueError as exc:
            raise InputError(f"recipe {recipe!r} is not a --method value ({exc})") from None
        for name, value in (("num_classes", num_classes), ("feature_dim", feature_dim)):
            _check_count(name, value)
        unknown = set(options) - set(spec.options)
        if unknown:
            raise InputError(f"{recipe} reads no option {sorted(unknown)[0]!r}", f"its own: {', '.join(spec.options) or 'none'}")
        values = {**option_defaults(spec.options), **options}
        for name, value in {"trade_off": trade_off, "target_loss_weight": target_loss_weight, "domain_labels": domain_labels,
                            "cdan_map": cdan_map, **values}.items():
            _check_argument(name, value)
        if domain_labels != "fixed" and not spec.adversarial:
            raise InputError(f"domain_labels={domain_labels!r} sets a discriminator's targets, and {recipe} has no discriminator",
                             "pass domain_labels='fixed', or a recipe with one (cdan-e, dann, ...)")
        disc = multilinear = None
        if spec.adversarial:
            disc = spec.alignment.discriminator(spec.alignment.discriminator_input_dim(feature_dim, num_classes, cdan_map))
            if spec.alignment.conditioned:
                multilinear = MultilinearMap(feature_dim, num_classes, cdan_map=cdan_map)
        bank = None
        if any(loss.bank for loss in spec.target_losses):
            if target_size is None:
                raise InputError(f"{recipe} keeps a bank of the target set: pass target_size, the number of target images")
            _check_count("target_size", target_size)
            bank = TargetBank(target_size, feature_dim, num_classes)
        return cls(spec.alignment, disc, multilinear, head, spec.target_losses, trade_off, target_loss_weight, domain_labels, values,
                   bank)

    @property
    def adversarial(self) -> bool:
        return self.alignment.adversarial

    def forward(self, out: StepOutput, coeff: float) -> Loss:
        """(L, logged, probe): the loss to minimize, its detached parts (loss_cls, loss_adv,
        loss_extra, loss_target, loss_teacher) and statistics (adversarial.adversarial_loss's),
        all on the device, and the probe whose `norm` holds the adversarial gradient's norm after
        backward. `coeff` is the reversal coefficient (training/schedule.py, adversarial.grl_coeff)."""
        source_logits = out.logits[: out.sources].float()
        if out.row_weights is None:
            loss_cls = F.cross_entropy(source_logits, out.source_labels)
        else:
            per_row = F.cross_entropy(source_logits, out.source_labels, reduction="none")
            loss_cls = (out.row_weights[: out.sources] * per_row).mean()
        if self.bank is not None:
            out = dataclasses.replace(out, bank=self.bank)
        zero = torch.zeros((), device=out.logits.device)
        loss_adv, loss_extra, loss_target, stats, probe = zero, zero, zero, {}, None
        if out.has_target and self.adversarial:
            adversary = Adversary(self.alignment, self.discriminator, self.multilinear, self.head, self.options)
            batch = Batch(out.features, out.logits, out.domain, out.row_weights)
            probe = GradientProbe()
            loss_adv, loss_extra, stats = adversarial_loss(adversary, batch, self.domain_labels, coeff, probe)
        for part in self.target_losses if out.has_target else ():
            loss_target = loss_target + part.loss(out, self.options)
        loss = loss_cls + self.trade_off * loss_adv + loss_extra + self.target_loss_weight * loss_target
        loss_teacher = zero
        if self.teacher is not None and out.has_target:
            loss_teacher = -(self.teacher[out.target_index] * F.log_softmax(out.target_logits, dim=1)).sum(1).mean()
            loss = loss + self.teacher_weight * loss_teacher
        logged = {"loss_cls": loss_cls.detach(), "loss_adv": loss_adv.detach(), "loss_extra": loss_extra.detach(),
                  "loss_target": loss_target.detach(), "loss_teacher": loss_teacher.detach(), **stats}
        return Loss(loss, logged, probe)


def _check_count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}"[:160])


def _check_argument(name: str, value: Any) -> None:
    """An argument of Objective.of checked as the command line checks the option it is (its type,
    choices and range), named as the argument: InputError, not a NaN loss or a torch error later."""
    spec, (kind, _) = declaration(FIELDS[name]), value_kind(FIELDS[name].type)
    ok = {"str": isinstance(value, str), "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          "bool": isinstance(value, bool)}[kind]
    if not ok:
        raise InputError(f"{name} must be {'a finite number' if kind == 'float' else 'an integer' if kind == 'int' else 'a ' + kind}, "
                         f"got {value!r}"[:160])
    if spec.choices and value not in spec.choices:
        raise InputError(f"unknown {name} {value!r}", f"choose one of {', '.join(spec.choices)}")
    if kind in ("int", "float") and not spec.in_range(value):
        raise InputError(f"{name} must be {spec.range_text(kind)}, got {value!r}", spec.range_hint)
