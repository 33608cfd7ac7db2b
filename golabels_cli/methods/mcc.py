"""MCC: Minimum Class Confusion (Jin et al., ECCV 2020), a loss on the target's predictions.

    p = softmax(z / T)                                     temperature T (--mcc-temperature, 2.0; the paper's 2.5)
    w_i = B * (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j)))  (detached: certain rows count more)
    C = p^T diag(w) p                                       [C, C]: how often two classes are predicted together
    C~_jk = C_jk / sum_k' C_jk'                             each row normalized
    L_mcc = (sum_jk C~_jk - sum_j C~_jj) / C                the off-diagonal mass, per class

Minimizing it makes the batch's predictions confuse fewer pairs of classes, without a
discriminator: the cheapest strong recipe on a frozen backbone (benchmarks/RESULTS.md, issue 33).

Args: --mcc-temperature; the weight is --target-loss-weight.
Inputs: the step's StepOutput; this loss reads out.target_logits, the target rows' logits z.
Shapes: z [B, C] -> scalar.
"""

import torch
import torch.nn.functional as F

from ..entropy import entropy
from ..options import options_of
from .recipe import TargetLoss


def minimum_class_confusion(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    batch, classes = logits.shape
    probs = F.softmax(logits / temperature, dim=1)
    weights = 1.0 + torch.exp(-entropy(probs).detach())
    weights = batch * weights / weights.sum()
    confusion = (probs * weights[:, None]).t() @ probs
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - torch.trace(confusion)) / classes


LOSS = TargetLoss(
    name="mcc",
    summary="minimum class confusion on the target's predictions (Jin et al. 2020); no discriminator",
    loss=lambda out, options: minimum_class_confusion(out.target_logits, options["mcc_temperature"]),
    options=options_of("mcc"),
)
