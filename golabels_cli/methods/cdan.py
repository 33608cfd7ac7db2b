"""CDAN: Conditional Domain Adversarial Networks (Long et al., NeurIPS 2018).

    L_adv = sum_i w_i * BCE(D(GRL(f_i (x) g_i)), t_i) / N,   w_i = 1

The discriminator sees the outer product of the features f and the detached class probabilities
g, so it can tell the domains apart class by class. With --cdan-map auto (the default) the product
is replaced above 4096 dimensions by the randomized multilinear map (f R_f) * (g R_g) / sqrt(1024),
as the original code's --random option; --cdan-map full always takes the product, as TLlib and
the original code do on Office-31.

Args (the shared adapt options): --trade-off, --grl-alpha, --schedule, --discriminator. --cdan-map.
Inputs: the step's bottleneck features f and logits z, source rows then target rows, and each row's domain (adversarial.adversarial_loss).
Shapes: f [N, F], g [N, C] -> D's input [N, F * C], or [N, 1024] randomized.
"""

from .adversarial import Method

METHOD = Method(
    name="cdan",
    summary="discriminator conditioned on features x predictions (Long et al. 2018)",
    discriminator_input="conditioned",
)
