"""DANN+E: DANN with CDAN+E's entropy weights.

    L_adv = sum_i w_i * BCE(D(GRL(f_i)), t_i) / N,   w_i = 1 + exp(-H(g_i)), normalized to mean 1

Confident samples (low entropy of g = softmax(logits), detached) weigh more: their features are
the ones worth aligning. The discriminator sees the features, as DANN's.

Args (the shared adapt options): --trade-off, --grl-alpha, --schedule, --discriminator.
Inputs: the step's bottleneck features f and logits z, source rows then target rows, and each row's domain (adversarial.adversarial_loss).
Shapes: f [N, F] -> D's input [N, F]; g [N, C] -> w [N].
"""

from .adversarial import Method, entropy_weights

METHOD = Method(
    name="dann-e",
    summary="DANN with CDAN+E's entropy weights",
    discriminator_input="features",
    sample_weights=lambda probs, logits, coeff: entropy_weights(probs),
)
