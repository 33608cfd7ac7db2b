"""CDAN+E: CDAN with entropy conditioning (Long et al., NeurIPS 2018), golabels' default method.

    L_adv = sum_i w_i * BCE(D(GRL(f_i (x) g_i)), t_i) / N,   w_i = 1 + exp(-H(g_i)), normalized to mean 1

As CDAN, with samples weighted by the certainty of their prediction: hard-to-classify samples,
whose g is a poor condition, pull less on the alignment.

Args (the shared adapt options): --trade-off, --grl-alpha, --schedule, --discriminator. --cdan-map.
Inputs: the step's bottleneck features f and logits z, source rows then target rows, and each row's domain (adversarial.adversarial_loss).
Shapes: f [N, F], g [N, C] -> D's input [N, F * C] (or [N, 1024] randomized); w [N].
"""

from .adversarial import Method, entropy_weights

METHOD = Method(
    name="cdan-e",
    summary="CDAN with entropy-weighted samples (Long et al. 2018), the default",
    discriminator_input="conditioned",
    sample_weights=lambda probs, logits, coeff: entropy_weights(probs),
)
