"""IM: information maximization (as in SHOT, Liang et al., ICML 2020), a loss on the target's predictions.

    p_i = softmax(z_i)
    L_im = mean_i H(p_i) - H(mean_i p_i)

The first term makes each prediction confident; the second, subtracted, keeps the batch's mean
prediction spread over the classes so that confidence does not collapse onto one class.

Args: the weight is --target-loss-weight.
Inputs: the step's StepOutput; this loss reads out.target_logits, the target rows' logits z.
Shapes: z [B, C] -> scalar.
"""

import torch
import torch.nn.functional as F

from ..entropy import entropy
from ..options import options_of
from .recipe import TargetLoss


def information_maximization(logits: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(logits, dim=1)
    return entropy(probs).mean() - entropy(probs.mean(0))


LOSS = TargetLoss(
    name="im",
    summary="information maximization on the target's predictions (SHOT, Liang et al. 2020)",
    loss=lambda out, options: information_maximization(out.target_logits),
    options=options_of("im"),
)
