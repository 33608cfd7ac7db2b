"""GVB-GD: Gradually Vanishing Bridge (Cui et al., CVPR 2020).

    logits = fc(f) - B_g(f),   D(x) = out(x) - B_d(x)        each bridge B a parallel output layer
    L_adv  = sum_i w_i * BCE(D(GRL(g_i)), t_i) / N,   g = softmax(logits) with its gradient
    w_i    = exp(-H(GRL(g_i))), normalized to mean 1 in each domain (the gradient through w reversed too)
    L_extra = mu_g * mean |B_g(f)| + mu_d * mean |B_d|      so the bridges vanish

The bridges absorb the domain-specific part of the outputs and are penalized toward zero; the
discriminator sees the classifier's probabilities, the classifier's only way to fool it.

Args:
    bridge_g_weight: mu_g, weight of the classifier bridge's mean |output| (GVB's lambda), 1.
    bridge_d_weight: mu_d, weight of the discriminator bridge's mean |output| (GVB's mu), 1.
Inputs: the step's bottleneck features f and logits z, source rows then target rows, and each row's domain (adversarial.adversarial_loss).
Shapes: g [N, C] -> D's input [N, C]; w [N].
"""

import torch
import torch.nn.functional as F

from ..entropy import entropy
from ..options import options_of
from .adversarial import ExtraLossInputs, Method, grad_reverse


def gvb_weights(probs: torch.Tensor, coeff: float) -> torch.Tensor:
    """GVB's sample weights exp(-H(g)), normalized to mean 1 in each half of the batch (source,
    target); the entropy's gradient into the classifier is reversed, as in the original."""
    p = grad_reverse(probs, coeff)
    w = torch.exp(-entropy(p))
    n = len(w) // 2
    return torch.cat([w[:n] / w[:n].sum().detach() * n, w[n:] / w[n:].sum().detach() * (len(w) - n)])


def bridge_penalty(inputs: ExtraLossInputs) -> torch.Tensor:
    o = inputs.options
    return (o["bridge_g_weight"] * inputs.head.bridge(inputs.features).float().abs().mean()
            + o["bridge_d_weight"] * inputs.disc_bridge.float().abs().mean())


METHOD = Method(
    name="gvb",
    summary="gradually vanishing bridges on classifier and discriminator (GVB-GD, Cui et al. 2020)",
    discriminator_input="probabilities",
    sample_weights=lambda probs, logits, coeff: gvb_weights(F.softmax(logits.float(), dim=1), coeff),
    extra_loss=bridge_penalty,
    bridged_head=True,
    discriminator_bridge=True,
    reference_discriminator="dropout",
    options=options_of("gvb"),
)
