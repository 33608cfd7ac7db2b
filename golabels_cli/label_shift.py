"""How the target's class frequencies differ from the source's, estimated without target labels.

Adversarial alignment matches the marginal feature distributions of the two domains; when their
class priors differ (label shift), matching marginals pulls target images onto the wrong classes.
Seeing the shift is the first step (issue 10).

    em_prior     Saerens, Latinne & Decaestecker (2002): re-weight the classifier's posteriors by
                 q(y) / p_s(y) and re-estimate q(y) as their mean, until it settles.
    bbse_prior   black-box shift estimation (Lipton, Wang & Smola, 2018): solve C w = mu, with C the
                 joint distribution of (prediction, label) on labeled source images and mu the
                 distribution of predictions on the target; q(y) = w(y) p_s(y). Predictions may be
                 soft (probabilities), as in IWDAN. It needs no calibrated posteriors: a classifier
                 biased toward a class is biased the same way on both domains, and C cancels it.
    total_variation(q, p) = 1/2 sum_y |q(y) - p(y)|, 0 (same) to 1 (disjoint).
    shift_p_value  Pearson's chi-square test that two sets of class counts come from one distribution
                 (or one set from a known distribution): how likely a difference as large is by chance.
    class_weights  w(y) = q(y) / p(y) for --label-shift-weights (importance weighting of source
                 samples as in IWDAN, Tachet des Combes et al., NeurIPS 2020), clipped to
                 [1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT] and scaled so that sum_y p(y) w(y) = 1.
    moving_average IWDAN's smoothing of successive estimates, new = m * old + (1 - m) * estimate.
"""

from __future__ import annotations

import torch

# Total variation above which the run warns about label shift. Measured (RESULTS.md, issue 22): the
# balanced runs read at most 0.26 (the demo's adapted model, whose errors lean on a few classes),
# the long-tailed Office-31 runs of the default at least 0.36.
SHIFT_WARNING = 0.3
# ... when a difference that large is this unlikely by chance: a handful of held-out images read large
# differences out of noise. (At 0.001 a long-tailed Office-31 run with a 0.48 shift went unwarned:
# 106 held-out images over 31 classes gave p = 0.0035.)
SHIFT_P_VALUE = 0.01
# A class that is rare in the source but estimated frequent in the target would otherwise let a
# handful of its images dominate every batch they appear in; one estimated absent would stop being
# learned at all, and a young model, whose predictions collapse onto a few classes, estimates many so.
MAX_CLASS_WEIGHT = 10.0


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


def bbse_prior(source_probs: torch.Tensor, source_labels: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Label-shift estimate from labeled source images' predictions (N x C probabilities, or one-hot
    for hard predictions) and the target's: least squares C w = mu, negative ratios clipped to 0."""
    c = source_probs.shape[1]
    labels = torch.nn.functional.one_hot(source_labels.long(), c).double()
    joint = source_probs.double().T @ labels / max(len(source_labels), 1)  # C[i, j] = P(prediction i, label j)
    mu = target_probs.double().mean(0)
    w = torch.linalg.lstsq(joint, mu.unsqueeze(1)).solution.squeeze(1).clamp_min(0)
    q = w * labels.mean(0)
    return (q / q.sum().clamp_min(1e-12)).float()


def moving_average(previous: torch.Tensor, estimate: torch.Tensor, momentum: float = 0.5) -> torch.Tensor:
    """IWDAN's smoothing (momentum 0.5 there): one estimate from a young, changing model moves the
    weights half way, so a bad one cannot steer training on its own."""
    return momentum * previous.float() + (1 - momentum) * estimate.float()


def total_variation(q: torch.Tensor, p: torch.Tensor) -> float:
    return float(0.5 * (q.double() - p.double()).abs().sum())


def class_weights(target_prior: torch.Tensor, trained_prior: torch.Tensor, cap: float = MAX_CLASS_WEIGHT) -> torch.Tensor:
    """Per-class weights that make source batches drawn with `trained_prior` count as if drawn
    with `target_prior`: q(y) / p(y), clipped to [1 / cap, cap], with mean 1 under p."""
    p = trained_prior.double().clamp_min(1e-12)
    w = (target_prior.double() / p).clamp(1 / cap, cap)
    return (w / (p * w).sum().clamp_min(1e-12)).float()


def shift_p_value(counts: torch.Tensor, reference: torch.Tensor, reference_is_prior: bool = False) -> float:
    """Chi-square test of homogeneity of two rows of class counts (or, with `reference_is_prior`,
    of goodness of fit of `counts` to the class distribution `reference`): its p-value."""
    counts, reference = counts.double(), reference.double()
    if reference_is_prior:
        keep = reference > 0
        expected = counts.sum() * reference[keep] / reference[keep].sum()
        statistic, df = ((counts[keep] - expected) ** 2 / expected).sum(), int(keep.sum()) - 1
    else:
        table = torch.stack([counts, reference])
        table = table[:, table.sum(0) > 0]
        expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
        statistic, df = ((table - expected) ** 2 / expected).sum(), table.shape[1] - 1
    if df < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), statistic / 2))
