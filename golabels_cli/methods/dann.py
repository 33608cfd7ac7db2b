"""DANN: Domain-Adversarial Neural Networks (Ganin et al., JMLR 2016).

    L_adv = sum_i w_i * BCE(D(GRL(f_i)), t_i) / N

The discriminator D sees the bottleneck features f; every sample weighs the same (w_i = 1, times
the domain-label mode's own weight).

Args (the shared adapt options): --trade-off, --grl-alpha, --schedule, --discriminator.
Inputs: the step's bottleneck features f and logits z, source rows then target rows, and each row's domain (adversarial.adversarial_loss).
Shapes: f [N, F] -> D's input [N, F].
"""

from .adversarial import Method

METHOD = Method(
    name="dann",
    summary="domain-adversarial training on the features (Ganin et al. 2016)",
    discriminator_input="features",
)
