"""Adversarial losses: gradient reversal and its schedule, DANN, CDAN and CDAN+E.

With features f, classifier probabilities g = softmax(logits) (detached), a discriminator D and
domain targets t from `domain_labels` (Go-labels by default), the adversarial loss is

    L_adv = sum_i w_i * BCE(D(GRL_lambda(h_i)), t_i) / N          over the source+target batch

* DANN  (Ganin et al., JMLR 2016):        h = f,                      w = 1
* CDAN  (Long et al., NeurIPS 2018):      h = f (x) g  (outer product; a randomized
                                          multilinear map when dim(f)*C > 4096)
* CDAN+E:                                 as CDAN, w = 1 + exp(-H(g)), normalized to mean 1

times the mode's per-sample weight. GRL is the identity forward and multiplies the gradient by
-lambda backward; lambda = 2 / (1 + exp(-alpha * progress)) - 1 warms from 0 to 1 so the noisy
early discriminator does not wreck the features. The total loss is L_cls + trade_off * L_adv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .domain_labels import domain_targets

METHODS = ("cdan-e", "cdan", "dann", "source-only")
METHOD_HELP = {
    "cdan-e": "CDAN with entropy-weighted samples (CDAN+E, Long et al. 2018)",
    "cdan": "discriminator conditioned on features x predictions (Long et al. 2018)",
    "dann": "domain-adversarial training on features (Ganin et al. 2016)",
    "source-only": "no adaptation: the baseline every other method must beat",
}
MULTILINEAR_MAX_DIM = 4096
RANDOMIZED_DIM = 1024


class _GradientReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    return _GradientReverse.apply(x, coeff)


def grl_coeff(step: int, total: int, alpha: float = 10.0) -> float:
    """lambda = 2 / (1 + exp(-alpha * step / total)) - 1: 0 at the start, close to 1 at the end."""
    progress = step / max(total, 1)
    return 2.0 / (1.0 + math.exp(-alpha * progress)) - 1.0


def discriminator_input_dim(method: str, feature_dim: int, num_classes: int) -> int:
    if method == "dann":
        return feature_dim
    product = feature_dim * num_classes
    return product if product <= MULTILINEAR_MAX_DIM else RANDOMIZED_DIM


class MultilinearMap(nn.Module):
    """f (x) g for CDAN; above MULTILINEAR_MAX_DIM, the randomized map (f R_f) * (g R_g) / sqrt(d)."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator | None = None):
        super().__init__()
        self.randomized = feature_dim * num_classes > MULTILINEAR_MAX_DIM
        if self.randomized:
            # Fixed random projections: buffers, so they are saved, moved and exported with the model.
            self.register_buffer("rf", torch.randn(feature_dim, RANDOMIZED_DIM, generator=generator))
            self.register_buffer("rg", torch.randn(num_classes, RANDOMIZED_DIM, generator=generator))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (f @ self.rf) * (g @ self.rg) / math.sqrt(RANDOMIZED_DIM)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


def entropy_weights(probs: torch.Tensor) -> torch.Tensor:
    """CDAN+E sample weights 1 + exp(-H(p)), normalized to mean 1 over the batch."""
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)
    w = 1.0 + torch.exp(-entropy)
    return w / w.mean()


def adversarial_loss(
    method: str,
    mode: str,
    features: torch.Tensor,
    logits: torch.Tensor,
    domain: torch.Tensor,
    discriminator: nn.Module,
    multilinear: MultilinearMap | None,
    coeff: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss for the discriminator (and, reversed, for the features) plus detached statistics.

    `domain` holds the raw labels (1 source, 0 target) of the rows of `features` and `logits`.
    """
    probs = F.softmax(logits.float(), dim=1).detach()
    if method == "dann":
        h = features
    elif method in ("cdan", "cdan-e"):
        h = multilinear(features, probs.to(features.dtype))
    else:
        raise ValueError(f"no adversarial loss for method {method!r}")
    disc_logits = discriminator(grad_reverse(h, coeff)).squeeze(1).float()
    t = domain_targets(mode, disc_logits, domain)
    weights = t.weights
    if method == "cdan-e":
        weights = weights * entropy_weights(probs)
    loss = F.binary_cross_entropy_with_logits(disc_logits, t.targets, weight=weights)
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
    return loss, stats
