"""H(p) = -sum_c p_c log p_c, defined once: CDAN+E's and MCC's sample weights, GVB's, IM's loss,
and the entropy, IM and SND validators."""

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) over the last dimension. Shapes: [N, C] -> [N], [C] -> scalar."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
