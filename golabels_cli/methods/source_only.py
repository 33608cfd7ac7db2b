"""source-only: no adaptation, the baseline every method must beat.

    L = CE(source logits, source labels)

No discriminator and no target batches: the classifier trains on the labeled source alone, with
the same network, data and schedule as the adapted runs it is compared with.

Args: none of its own.
Inputs: the step's logits of the source rows and their labels (the objective's CE term).
Shapes: z [B, C], y [B] -> scalar.
"""

from .adversarial import Method

METHOD = Method(
    name="source-only",
    summary="no adaptation, the baseline every method must beat",
    discriminator_input=None,
)
