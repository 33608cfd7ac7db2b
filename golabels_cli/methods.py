"""Adversarial losses: gradient reversal and its schedule, DANN, DANN+E, CDAN, CDAN+E, GVB, ASAN.

With bottleneck features f, classifier probabilities g = softmax(logits) (detached unless said),
a discriminator D and domain targets t from `domain_labels` (fixed by default; Go-labels with
--domain-labels go), every method's adversarial loss is

    L_adv = sum_i w_i * BCE(D(GRL_lambda(h_i)), t_i) / N          over the source+target batch

and the total loss is  L_cls + trade_off * L_adv + L_extra  with

* DANN   (Ganin et al., JMLR 2016):      h = f,  w = 1
* DANN+E:                                h = f,  w = 1 + exp(-H(g)), normalized to mean 1 (CDAN+E's weights)
* CDAN   (Long et al., NeurIPS 2018):    h = f (x) g  (the outer product; with --cdan-map auto, the
                                         default, a randomized multilinear map above 4096 dimensions,
                                         as the original code's --random option; full: always the
                                         product, as TLlib and the original code on Office-31),  w = 1
* CDAN+E:                                as CDAN, w = 1 + exp(-H(g)), normalized to mean 1
* GVB    (Cui et al., CVPR 2020, GVB-GD): the head is fc(f) - B_g(f) and D(x) = out(x) - B_d(x), each
                                         bridge B a parallel output layer;  h = softmax(logits) with its
                                         gradient;  w = exp(-H(GRL(g))), normalized to mean 1 in each
                                         domain (the gradient through w is reversed too);
                                         L_extra = mu_g * mean|B_g(f)| + mu_d * mean|B_d|, so the bridges vanish
* ASAN   (Raab et al., ACCV 2020):       CDAN+E with spectral normalization on D's layers, and
                                         L_extra = beta * ||[s_1..s_{n-k}, s_{n-k+1}^2..s_n^2] - s'|| / n_s,
                                         s and s' the singular values of the source and target feature
                                         batches (relevance spectral alignment with spectral shrinkage of
                                         the k smallest)

times the mode's per-sample weight. GRL is the identity forward and multiplies the gradient by
-lambda backward; lambda = 2 / (1 + exp(-alpha * i / horizon)) - 1 warms from 0 towards 1 so the
noisy early discriminator does not wreck the features. With `--schedule reference` the horizon is
10000 iterations whatever the run's length (the original CDAN code's max_iter, alpha 10; TLlib's
alpha 1 over 1000 iterations is the same curve): lambda is 0.05 at iteration 100 and 0.46 at 1000.
With `--schedule scaled` the horizon is the run's --iters, so every run ends near lambda = 1.

The loss is the mean over the concatenated batch, i.e. 0.5 * (mean over source + mean over target)
with equal halves: TLlib's DomainAdversarialLoss and the original CDAN code. The paper's Eq. 2 sums
the two means, twice this scale: `--trade-off 2`. Batches hold the source rows first, then as many
target rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .domain_labels import domain_targets

METHODS = ("cdan-e", "cdan", "dann", "dann-e", "gvb", "asan", "source-only")
CONDITIONED = ("cdan", "cdan-e", "asan")  # the discriminator sees f (x) g
ENTROPY_WEIGHTED = ("cdan-e", "dann-e", "asan")


@dataclass(frozen=True)
class MethodParams:
    """The extra hyper-parameters of GVB and ASAN, with their papers' defaults."""

    bridge_g_weight: float = 1.0  # GVB's lambda: weight of mean |classifier bridge|
    bridge_d_weight: float = 1.0  # GVB's mu: weight of mean |discriminator bridge|
    rsl_weight: float = 1e-3  # ASAN's weight of the spectral alignment loss
    rsl_k: int = 11  # ASAN: the k smallest source singular values are squared (shrunk)
# --cdan-map auto: the full map up to this size (256 x 16 classes), the randomized one above it.
# TLlib and the original code use the full map on Office-31 (7936 dims): `--cdan-map full`. It
# makes D's first layer 8M weights, 6-10x slower per step on a CPU with a frozen backbone, and
# read the same as the randomized map where both were run (Office-31, one seed; RESULTS.md).
MULTILINEAR_MAX_DIM = 4096
RANDOMIZED_DIM = 1024
CDAN_MAPS = ("auto", "full", "randomized")
SCHEDULES = ("reference", "scaled")
REFERENCE_HORIZON = 10000  # iterations: the original CDAN code's max_iter for lambda
REFERENCE_LR_GAMMA = 1e-3  # TLlib's and the original code's lr * (1 + 0.001 i) ** -0.75


class _GradientReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff, probe):
        ctx.coeff, ctx.probe = coeff, probe
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        reversed_grad = -ctx.coeff * grad
        if ctx.probe is not None:
            # A tensor on the device: reading it costs a host sync only when a metrics row is logged.
            ctx.probe["norm"] = torch.linalg.vector_norm(reversed_grad.detach().float())
        return reversed_grad, None, None


def grad_reverse(x: torch.Tensor, coeff: float, probe: dict | None = None) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward; `probe["norm"]` gets the reversed gradient's norm."""
    return _GradientReverse.apply(x, coeff, probe)


def grl_coeff(step: int, horizon: int, alpha: float = 10.0) -> float:
    """lambda = 2 / (1 + exp(-alpha * step / horizon)) - 1: 0 at the start, 0.99 at step = horizon."""
    progress = step / max(horizon, 1)
    return 2.0 / (1.0 + math.exp(-alpha * progress)) - 1.0


def randomized_map(cdan_map: str, feature_dim: int, num_classes: int) -> bool:
    return cdan_map == "randomized" or (cdan_map == "auto" and feature_dim * num_classes > MULTILINEAR_MAX_DIM)


def discriminator_input_dim(method: str, feature_dim: int, num_classes: int, cdan_map: str = "auto") -> int:
    if method in ("dann", "dann-e"):
        return feature_dim
    if method == "gvb":
        return num_classes
    return RANDOMIZED_DIM if randomized_map(cdan_map, feature_dim, num_classes) else feature_dim * num_classes


class MultilinearMap(nn.Module):
    """f (x) g for CDAN, or the randomized map (f R_f) * (g R_g) / sqrt(d) (`randomized_map`)."""

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
    """CDAN+E sample weights 1 + exp(-H(p)), normalized to mean 1 over the batch."""
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)
    w = 1.0 + torch.exp(-entropy)
    return w / w.mean()


def gvb_weights(probs: torch.Tensor, coeff: float) -> torch.Tensor:
    """GVB's sample weights exp(-H(g)), normalized to mean 1 in each half of the batch (source,
    target); the entropy's gradient into the classifier is reversed, as in the original."""
    p = grad_reverse(probs, coeff)
    w = torch.exp((p * torch.log(p.clamp_min(1e-12))).sum(1))
    n = len(w) // 2
    return torch.cat([w[:n] / w[:n].sum().detach() * n, w[n:] / w[n:].sum().detach() * (len(w) - n)])


def spectral_alignment(source: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """ASAN's relevance spectral loss: the distance between the singular values of the source and
    target feature batches, with the k smallest source values squared (spectral shrinkage), over n_s."""
    s = torch.linalg.svdvals(source.float())
    t = torch.linalg.svdvals(target.float())
    k = max(0, min(k, len(s) - 1))
    shrunk = torch.cat([s[: len(s) - k], s[len(s) - k:] ** 2])
    return torch.linalg.vector_norm(shrunk - t) / source.shape[0]


def adversarial_loss(
    method: str,
    mode: str,
    features: torch.Tensor,
    logits: torch.Tensor,
    domain: torch.Tensor,
    discriminator: nn.Module,
    multilinear: MultilinearMap | None,
    coeff: float,
    head: nn.Module | None = None,
    params: MethodParams = MethodParams(),
    row_weights: torch.Tensor | None = None,
    probe: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(L_adv, L_extra, detached statistics) for a batch of source rows then target rows.

    `domain` holds the raw labels (1 source, 0 target) of the rows of `features` and `logits`;
    `row_weights` (--label-shift-weights) multiplies each row's weight w_i; after backward,
    `probe["norm"]` holds the norm of the adversarial gradient the reversal layer passed on.
    """
    probs = F.softmax(logits.float(), dim=1).detach()
    if method in ("dann", "dann-e"):
        h = features
    elif method in CONDITIONED:
        h = multilinear(features, probs.to(features.dtype))
    elif method == "gvb":
        h = F.softmax(logits.float(), dim=1)  # with its gradient: the classifier's only way to fool D
    else:
        raise ValueError(f"no adversarial loss for method {method!r}")
    disc_logits, disc_bridge = discriminator(grad_reverse(h, coeff, probe))
    disc_logits = disc_logits.float()
    t = domain_targets(mode, disc_logits, domain)
    weights = t.weights
    if method in ENTROPY_WEIGHTED:
        weights = weights * entropy_weights(probs)
    elif method == "gvb":
        weights = weights * gvb_weights(F.softmax(logits.float(), dim=1), coeff)
    if row_weights is not None:
        weights = weights * row_weights
    # Weighted by hand: GVB's weights carry a gradient, which the weight= argument refuses.
    loss = (weights * F.binary_cross_entropy_with_logits(disc_logits, t.targets, reduction="none")).mean()

    extra = torch.zeros((), device=features.device)
    if method == "gvb":
        extra = params.bridge_g_weight * head.bridge(features).float().abs().mean() + params.bridge_d_weight * disc_bridge.float().abs().mean()
    elif method == "asan":
        n = len(features) // 2
        extra = params.rsl_weight * spectral_alignment(features[:n], features[n:], params.rsl_k)

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
