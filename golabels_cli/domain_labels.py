"""Domain targets for the discriminator's BCE loss: Go-labels and the modes it is compared with.

The discriminator outputs a logit; p = sigmoid(logit) is its belief that a sample comes from the
source. The raw domain label is d = 1 for source and d = 0 for target. A sample is *misclassified*
(well aligned: its features already fool the discriminator) when it sits on the wrong side of the
boundary or exactly on it: p <= 0.5 for a source sample, p >= 0.5 for a target sample.

Modes (``--domain-labels``):

* ``go``       g = (d + round(p)) / 2                    Go-labels, Eq. 3 of Jin et al.
* ``fixed``    g = d                                     plain DANN / CDAN
* ``soft``     g = (d + p) / 2                           the paper's no-rounding ablation
* ``zero-out`` g = d, misclassified samples weigh 0      the paper's "Zero Out" ablation

p is always detached: the targets are constants for the loss, no gradient flows into them.

At p exactly 0.5, ``torch.round`` rounds half to even (to 0), which would relabel a source
sample but not a target one. We follow the paper's text instead (Section 3.2: relabel when
"d_s <= 0.5 and d_t >= 0.5"), so both domains treat the boundary the same way: g = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .choices import DOMAIN_LABEL_MODES

MODES = DOMAIN_LABEL_MODES


@dataclass
class DomainTargets:
    targets: torch.Tensor  # BCE targets, same shape as the logits
    weights: torch.Tensor  # per-sample loss weights (0 drops a sample's loss)
    changed: torch.Tensor  # bool: the mode changed this sample's target or dropped it
    correct: torch.Tensor  # bool: the discriminator classified this sample correctly


def misclassified(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """True where the discriminator is fooled, boundary included (p <= .5 for d=1, p >= .5 for d=0)."""
    return torch.where(d > 0.5, p <= 0.5, p >= 0.5)


def domain_targets(mode: str, logits: torch.Tensor, d: torch.Tensor) -> DomainTargets:
    """BCE targets and weights for discriminator `logits` of samples with raw domain labels `d`."""
    if mode not in MODES:
        raise ValueError(f"unknown domain-label mode {mode!r}; expected one of {', '.join(MODES)}")
    p = torch.sigmoid(logits.detach().float())
    d = d.to(p.dtype)
    fooled = misclassified(p, d)
    ones = torch.ones_like(p)
    if mode == "go":
        # round(p) is 1 - d exactly where the sample is misclassified, so g = (d + round(p)) / 2.
        rounded = torch.where(fooled, 1.0 - d, d)
        targets, weights, changed = (d + rounded) / 2, ones, fooled
    elif mode == "fixed":
        targets, weights, changed = d, ones, torch.zeros_like(fooled)
    elif mode == "soft":
        targets, weights = (d + p) / 2, ones
        changed = targets != d
    else:  # zero-out
        targets, weights, changed = d, (~fooled).to(p.dtype), fooled
    return DomainTargets(targets=targets, weights=weights, changed=changed, correct=~fooled)
