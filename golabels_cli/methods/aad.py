"""AaD: attracting and dispersing (Yang et al., NeurIPS 2022), a neighbourhood loss on the target.

    p_i = softmax(z_i)                         the step's target rows
    N_i = the k rows of the target bank nearest to row i (cosine of the L2-normalized bottleneck
          features; bank.py), row i itself left out; s_j their stored predictions (detached)
    L_aad = - mean_i mean_{j in N_i} p_i . s_j  +  lambda * mean_i mean_{m != i} p_i . p_m

The first term pulls each prediction toward its neighbours' (images close in feature space get
one class: the target's own cluster structure); the second, over the other rows of the batch,
pushes predictions apart so that the attraction does not collapse everything onto one class.
The paper sums over the k neighbours and the batch; the means here keep the loss on one scale
whatever k and --batch-size are (the weight is --target-loss-weight, lambda is
--aad-dispersion). The paper adapts without the source; here it joins the source's
cross-entropy, and an alignment term if the recipe has one.

Args: --aad-neighbours (k), --aad-dispersion (lambda); the weight is --target-loss-weight.
Inputs: the step's target logits and bottleneck features, the target rows' indices, the bank.
Shapes: z [B, C], features [B, F], index [B] -> scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..options import options_of
from .bank import TargetBank
from .recipe import StepOutput, TargetLoss


def attract_disperse(logits: torch.Tensor, features: torch.Tensor, index: torch.Tensor, bank: TargetBank, k: int,
                     dispersion: float) -> torch.Tensor:
    probabilities = F.softmax(logits, dim=1)
    normalized = bank.write(index, features, probabilities)
    near = bank.neighbours(normalized, index, k)
    attraction = (probabilities[:, None, :] * bank.scores[near]).sum(-1).mean()
    others = probabilities @ probabilities.t()
    rows = len(probabilities)
    repulsion = (others.sum() - others.diagonal().sum()) / max(rows * (rows - 1), 1)
    return -attraction + dispersion * repulsion


def _loss(out: StepOutput, options: dict) -> torch.Tensor:
    if out.bank is None or out.target_index is None:
        raise ValueError("aad reads the target bank and the target rows' indices: build the objective with target_size")
    return attract_disperse(out.target_logits, out.target_features, out.target_index, out.bank, options["aad_neighbours"],
                            options["aad_dispersion"])


LOSS = TargetLoss(
    name="aad",
    summary="attracting and dispersing: each target prediction pulled toward its nearest target neighbours' (Yang et al. 2022)",
    loss=_loss,
    options=options_of("aad"),
    bank=True,
)
