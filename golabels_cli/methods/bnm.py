"""BNM: Batch Nuclear-norm Maximization (Cui et al., CVPR 2020), a loss on the target's predictions.

    P = softmax(z)                       [B, C]
    L_bnm = - mean(singular values of P)  (-||P||_* / min(B, C))

A large nuclear norm needs predictions that are both confident (each row near one-hot) and
diverse (the rows spread over many classes): entropy minimization without the collapse onto a
few classes.

Args: the weight is --target-loss-weight.
Inputs: the step's StepOutput; this loss reads out.target_logits, the target rows' logits z.
Shapes: z [B, C] -> scalar.
"""

import torch
import torch.nn.functional as F

from ..options import options_of
from .recipe import TargetLoss


def batch_nuclear_norm(logits: torch.Tensor) -> torch.Tensor:
    probabilities = F.softmax(logits, dim=1)
    # A diverged step's NaN would stop the SVD with its own error: the loss is NaN instead, so the
    # loop's check names the divergence (no host sync: the test stays on the device).
    diverged = ~torch.isfinite(probabilities).all()
    # svdvals' gradient U V^T is defined even where singular values repeat (unlike full SVD's).
    loss = -torch.linalg.svdvals(torch.nan_to_num(probabilities)).mean()
    return torch.where(diverged, torch.full_like(loss, float("nan")), loss)


LOSS = TargetLoss(
    name="bnm",
    summary="batch nuclear-norm maximization on the target's predictions (Cui et al. 2020)",
    loss=lambda out, options: batch_nuclear_norm(out.target_logits),
    options=options_of("bnm"),
)
