"""How the target's class frequencies differ from the source's, estimated without target labels.

Adversarial alignment matches the marginal feature distributions of the two domains; when their
class priors differ (label shift), matching marginals pulls target images onto the wrong classes.
Seeing the shift is the first step (issue 10).

    em_prior     Saerens, Latinne & Decaestecker (2002): re-weight the classifier's posteriors by
                 q(y) / p_s(y) and re-estimate q(y) as their mean, until it settles.
    bbse_prior   black-box shift estimation (Lipton, Wang & Smola, 2018): solve C w = mu, with C the
                 joint distribution of (prediction, label) on held-out source images and mu the
                 distribution of predictions on the target; q(y) = w(y) p_s(y).
    total_variation(q, p) = 1/2 sum_y |q(y) - p(y)|, 0 (same) to 1 (disjoint).
"""

from __future__ import annotations

import torch

SHIFT_WARNING = 0.25  # total variation above which the run warns about label shift


def em_prior(probs: torch.Tensor, source_prior: torch.Tensor, iters: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """The target prior that makes the re-weighted posteriors `probs` (computed under
    `source_prior`) self-consistent."""
    probs, source_prior = probs.double(), source_prior.double().clamp_min(1e-12)
    q = source_prior.clone()
    for _ in range(iters):
        adjusted = probs * (q / source_prior)
        adjusted = adjusted / adjusted.sum(1, keepdim=True).clamp_min(1e-12)
        new = adjusted.mean(0)
        if (new - q).abs().max() < tol:
            q = new
            break
        q = new
    return q.float()


def bbse_prior(val_predictions: torch.Tensor, val_labels: torch.Tensor, target_predictions: torch.Tensor,
               source_prior: torch.Tensor) -> torch.Tensor:
    """Label-shift estimate from hard predictions: held-out source (predictions, labels) and target predictions."""
    c = len(source_prior)
    joint = torch.zeros(c, c, dtype=torch.float64)
    joint.index_put_((val_predictions.long(), val_labels.long()), torch.ones(len(val_labels), dtype=torch.float64), accumulate=True)
    joint /= max(len(val_labels), 1)
    mu = torch.bincount(target_predictions.long(), minlength=c).double() / max(len(target_predictions), 1)
    w = torch.linalg.lstsq(joint, mu.unsqueeze(1)).solution.squeeze(1).clamp_min(0)
    q = w * source_prior.double()
    return (q / q.sum().clamp_min(1e-12)).float()


def total_variation(q: torch.Tensor, p: torch.Tensor) -> float:
    return float(0.5 * (q.double() - p.double()).abs().sum())
