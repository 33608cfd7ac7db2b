"""ASAN: Adversarial Spectral Adaptation Networks (Raab et al., ACCV 2020).

    L_adv   = CDAN+E's loss, with spectral normalization on every linear layer of D
    L_extra = beta * || [s_1 .. s_{n-k}, s_{n-k+1}^2 .. s_n^2] - s' || / n_s

s and s' are the singular values of the source and target feature batches, in decreasing order:
relevance spectral alignment, with spectral shrinkage of the k smallest source values. The
discriminator has no normalization after its spectrally normalized layers (a BatchNorm would undo
the bound), so its reference form is the dropout one.

Args:
    rsl_weight: beta, weight of the spectral alignment loss, 1e-3.
    rsl_k: k, how many of the smallest source singular values are squared, 11.
Inputs: the step's bottleneck features f and logits z, source rows then target rows, and each row's domain (adversarial.adversarial_loss).
Shapes: f [N, F], g [N, C] -> D's input [N, F * C] (or [N, 1024] randomized); s, s' [min(N/2, F)].
"""

import torch

from ..options import options_of
from .adversarial import ExtraLossInputs, Method, entropy_weights


def spectral_alignment(source: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """ASAN's relevance spectral loss: the distance between the singular values of the source and
    target feature batches, with the k smallest source values squared (spectral shrinkage), over n_s."""
    s = torch.linalg.svdvals(source.float())
    t = torch.linalg.svdvals(target.float())
    k = max(0, min(k, len(s) - 1))
    shrunk = torch.cat([s[: len(s) - k], s[len(s) - k:] ** 2])
    return torch.linalg.vector_norm(shrunk - t) / source.shape[0]


def spectral_loss(inputs: ExtraLossInputs) -> torch.Tensor:
    n = len(inputs.features) // 2
    return inputs.options["rsl_weight"] * spectral_alignment(inputs.features[:n], inputs.features[n:], inputs.options["rsl_k"])


METHOD = Method(
    name="asan",
    summary="CDAN+E, spectrally normalized discriminator, spectral alignment (Raab et al. 2020)",
    discriminator_input="conditioned",
    sample_weights=lambda probs, logits, coeff: entropy_weights(probs),
    extra_loss=spectral_loss,
    spectral_discriminator=True,
    reference_discriminator="dropout",
    options=options_of("asan"),
)
