"""What every adversarial method shares: the method spec, gradient reversal and its schedule,
CDAN's multilinear map, and the discriminator loss the specs parameterize.

With bottleneck features f, classifier probabilities g = softmax(logits) (detached unless a
method says otherwise), a discriminator D and domain targets t from `domain_labels` (fixed by
default; Go-labels with --domain-labels go), every method's adversarial loss is

    L_adv = sum_i w_i * BCE(D(GRL_lambda(h_i)), t_i) / N          over the source+target batch

where the method chooses D's input h (`Method.discriminator_input`), the sample weights w
(`Method.sample_weights`, times the mode's own) and an extra loss (`Method.extra_loss`); the
total loss is  L_cls + trade_off * L_adv + L_extra.

GRL is the identity forward and multiplies the gradient by -lambda backward; lambda =
2 / (1 + exp(-alpha * i / horizon)) - 1 warms from 0 towards 1 so the noisy early discriminator
does not wreck the features. With `--schedule reference` the horizon is 10000 iterations whatever
the run's length (the original CDAN code's max_iter, alpha 10; TLlib's alpha 1 over 1000
iterations is the same curve): lambda is 0.05 at iteration 100 and 0.46 at 1000. With
`--schedule scaled` the horizon is the run's --iters, so every run ends near lambda = 1.

The loss is the mean over the concatenated batch, i.e. 0.5 * (mean over source + mean over target)
with equal halves: TLlib's DomainAdversarialLoss and the original CDAN code. The paper's Eq. 2 sums
the two means, twice this scale: `--trade-off 2`. Batches hold the source rows first, then as many
target rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import CDAN_MAPS, REFERENCE_HORIZON, REFERENCE_LR_GAMMA, SCHEDULES  # noqa: F401 - re-exported
from ..domain_labels import domain_targets
from ..entropy import entropy
from ..models import DISCRIMINATORS, Discriminator

# --cdan-map auto: the full map up to this size (256 x 16 classes), the randomized one above it.
# TLlib and the original code use the full map on Office-31 (7936 dims): `--cdan-map full`. It
# makes D's first layer 8M weights, 6-10x slower per step on a CPU with a frozen backbone, and
# read the same as the randomized map where both were run (Office-31, one seed; RESULTS.md).
MULTILINEAR_MAX_DIM = 4096
RANDOMIZED_DIM = 1024
DISCRIMINATOR_INPUTS = ("features", "conditioned", "probabilities")


@dataclass(frozen=True)
class ExtraLossInputs:
    """What a method's extra loss may read: the step's bottleneck features (source rows, then
    target rows), the classifier's head, the discriminator's bridge output (GVB) and the method's
    own options (`Method.options`, from the run's config)."""

    features: torch.Tensor
    head: nn.Module | None
    disc_bridge: torch.Tensor | None
    options: dict[str, Any]


@dataclass(frozen=True)
class Method:
    """One adaptation method, as the rest of golabels reads it.

    discriminator_input: what D sees: "features" (f), "conditioned" (f (x) g, CDAN's map) or
        "probabilities" (g with its gradient, GVB); None: the method has no discriminator.
    sample_weights: (detached probabilities [N, C], logits [N, C], lambda) -> weights [N], or None.
    extra_loss: ExtraLossInputs -> a scalar added to the total loss (logged as loss_extra), or None.
    bridged_head, discriminator_bridge, spectral_discriminator: the model's variants (models.py).
    reference_discriminator: the discriminator of the method's reference code (--discriminator's default).
    options: the config keys only this method reads (options.options_of: declared with their field).
    """

    name: str
    summary: str  # one line: --help and the docs
    discriminator_input: str | None = "features"
    sample_weights: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    extra_loss: Callable[[ExtraLossInputs], torch.Tensor] | None = None
    bridged_head: bool = False
    discriminator_bridge: bool = False
    spectral_discriminator: bool = False
    reference_discriminator: str = "batchnorm"
    options: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        assert self.discriminator_input in (*DISCRIMINATOR_INPUTS, None), self.discriminator_input
        assert self.reference_discriminator in DISCRIMINATORS, self.reference_discriminator

    @property
    def adversarial(self) -> bool:
        return self.discriminator_input is not None

    @property
    def conditioned(self) -> bool:
        """D sees f (x) g: the run builds a MultilinearMap."""
        return self.discriminator_input == "conditioned"

    def discriminator_input_dim(self, feature_dim: int, num_classes: int, cdan_map: str = "auto") -> int:
        if self.discriminator_input == "features":
            return feature_dim
        if self.discriminator_input == "probabilities":
            return num_classes
        if self.discriminator_input == "conditioned":
            return RANDOMIZED_DIM if randomized_map(cdan_map, feature_dim, num_classes) else feature_dim * num_classes
        raise ValueError(f"method {self.name!r} has no discriminator")

    def discriminator(self, in_dim: int, hidden: int = 1024, layers: str | None = None) -> Discriminator:
        return Discriminator(in_dim, hidden, bridge=self.discriminator_bridge, spectral=self.spectral_discriminator,
                             layers=layers or self.reference_discriminator)


@dataclass
class GradientProbe:
    """The norm of the gradient a reversal layer passed back, filled by the backward pass: a
    tensor on the device, read (a host sync) only when a metrics row is logged."""

    norm: torch.Tensor | None = None


class _GradientReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff, probe):
        ctx.coeff, ctx.probe = coeff, probe
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        reversed_grad = -ctx.coeff * grad
        if ctx.probe is not None:
            ctx.probe.norm = torch.linalg.vector_norm(reversed_grad.detach().float())
        return reversed_grad, None, None


def grad_reverse(x: torch.Tensor, coeff: float, probe: GradientProbe | None = None) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward; `probe.norm` gets the reversed gradient's norm."""
    return _GradientReverse.apply(x, coeff, probe)


def grl_coeff(step: int, horizon: int, alpha: float = 10.0) -> float:
    """lambda = 2 / (1 + exp(-alpha * step / horizon)) - 1: 0 at the start, 0.99 at step = horizon."""
    progress = step / max(horizon, 1)
    return 2.0 / (1.0 + math.exp(-alpha * progress)) - 1.0


def randomized_map(cdan_map: str, feature_dim: int, num_classes: int) -> bool:
    return cdan_map == "randomized" or (cdan_map == "auto" and feature_dim * num_classes > MULTILINEAR_MAX_DIM)


class MultilinearMap(nn.Module):
    """f (x) g for CDAN, or the randomized map (f R_f) * (g R_g) / sqrt(d) (`randomized_map`).

    Shapes: f [N, F], g [N, C] -> [N, F * C], or [N, 1024] randomized.
    """

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator | None = None, cdan_map: str = "auto"):
        super().__init__()
        self.randomized = randomized_map(cdan_map, feature_dim, num_classes)
        if self.randomized:
            # Fixed random projections: buffers, so they are saved, moved and exported with the model.
            self.register_buffer("rf", torch.randn(feature_dim, RANDOMIZED_DIM, generator=generator))
            self.register_buffer("rg", torch.randn(num_classes, RANDOMIZED_DIM, generator=generator))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (f @ self.rf) * (g @ self.rg) / math.sqrt(RANDOMIZED_DIM)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


def entropy_weights(probs: torch.Tensor) -> torch.Tensor:
    """CDAN+E's sample weights 1 + exp(-H(p)), normalized to mean 1 over the batch. Shapes: [N, C] -> [N]."""
    w = 1.0 + torch.exp(-entropy(probs))
    return w / w.mean()


@dataclass
class Adversary:
    """What a run trains against its features: the method, its discriminator (DDP-wrapped or not),
    CDAN's map when the method is conditioned, the classifier's head (GVB's bridge) and the
    method's own options."""

    method: Method
    discriminator: nn.Module
    multilinear: MultilinearMap | None = None
    head: nn.Module | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """One step's rows, source first, then as many target rows.

    features: bottleneck features [N, F]; logits [N, C]; domain: the raw labels [N] (1 source,
    0 target); row_weights [N] (--label-shift-weights) multiply each row's weight, or None.
    """

    features: torch.Tensor
    logits: torch.Tensor
    domain: torch.Tensor
    row_weights: torch.Tensor | None = None


def adversarial_loss(adversary: Adversary, batch: Batch, mode: str, coeff: float, probe: GradientProbe | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(L_adv, L_extra, detached statistics) of a batch, with the domain targets of `mode`
    (domain_labels.MODES) and reversal coefficient `coeff`; after backward, `probe.norm` holds
    the norm of the adversarial gradient the reversal layer passed on.

    Shapes: the statistics are scalars: the discriminator's accuracy (disc_acc, per domain
    disc_acc_src, disc_acc_tgt) and the fraction of each domain's rows whose target the mode
    changed (relabeled_src, relabeled_tgt: the paper's Fig. 4).
    """
    method, features, logits, domain = adversary.method, batch.features, batch.logits, batch.domain
    probs = F.softmax(logits.float(), dim=1).detach()
    if method.discriminator_input == "features":
        h = features
    elif method.discriminator_input == "conditioned":
        h = adversary.multilinear(features, probs.to(features.dtype))
    elif method.discriminator_input == "probabilities":
        h = F.softmax(logits.float(), dim=1)  # with its gradient: the classifier's only way to fool D
    else:
        raise ValueError(f"no adversarial loss for method {method.name!r}")
    disc_logits, disc_bridge = adversary.discriminator(grad_reverse(h, coeff, probe))
    disc_logits = disc_logits.float()
    t = domain_targets(mode, disc_logits, domain)
    weights = t.weights
    if method.sample_weights is not None:
        weights = weights * method.sample_weights(probs, logits, coeff)
    if batch.row_weights is not None:
        weights = weights * batch.row_weights
    # Weighted by hand: GVB's weights carry a gradient, which the weight= argument refuses.
    loss = (weights * F.binary_cross_entropy_with_logits(disc_logits, t.targets, reduction="none")).mean()
    extra = torch.zeros((), device=features.device)
    if method.extra_loss is not None:
        extra = method.extra_loss(ExtraLossInputs(features, adversary.head, disc_bridge, adversary.options))

    # Masked means, not boolean indexing: indexing by a mask makes the GPU wait for the host.
    src = (domain > 0.5).float()
    tgt = 1.0 - src
    correct, changed = t.correct.float(), t.changed.float()
    stats = {
        "disc_acc": correct.mean(),
        "disc_acc_src": (correct * src).sum() / src.sum(),
        "disc_acc_tgt": (correct * tgt).sum() / tgt.sum(),
        "relabeled_src": (changed * src).sum() / src.sum(),
        "relabeled_tgt": (changed * tgt).sum() / tgt.sum(),
    }
    return loss, extra, stats
