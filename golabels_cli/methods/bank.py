"""A memory of the target set: what a neighbourhood loss knows of every target training image
between the steps that draw it (AaD, Yang et al. NeurIPS 2022; NRC, NeurIPS 2021; ATDOC, CVPR 2021).

    features [N, F]   each target image's bottleneck features, L2-normalized
    scores   [N, C]   its softmax prediction

Row i is target image i of the run (the index the samplers draw). The bank is filled once by a
pass over the whole target set in eval mode before the first step (loop.open_streams), then each
step writes its own target rows, as they come out of the training forward pass (detached), before
their neighbours are looked up: so the nearest neighbours of a row are read from a bank at most
one pass over the target old, and exact for the rows of the step itself. With --freeze-backbone
the pass costs one head's forward over cached features. A checkpoint saves the bank (its state
dict), so a resumed run reads the rows the uninterrupted one would have.

Args: size N (target images), feature_dim F, num_classes C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TargetBank(nn.Module):
    def __init__(self, size: int, feature_dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(size, feature_dim))
        self.register_buffer("scores", torch.zeros(size, num_classes))

    @torch.no_grad()
    def fill(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        """Every row at once: `features` [N, F] and `logits` [N, C] of the whole target set, in its order."""
        if features.shape != self.features.shape or logits.shape != self.scores.shape:
            raise ValueError(f"a bank of {tuple(self.features.shape)} and {tuple(self.scores.shape)} cannot be filled with "
                             f"{tuple(features.shape)} and {tuple(logits.shape)}")
        self.features.copy_(F.normalize(features.float(), dim=1))
        self.scores.copy_(logits.float().softmax(1))

    @torch.no_grad()
    def write(self, index: torch.Tensor, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Rows `index` [B] set to `features` [B, F] (normalized here) and `scores` [B, C];
        returns the normalized features."""
        normalized = F.normalize(features.detach().float(), dim=1)
        self.features[index] = normalized
        self.scores[index] = scores.detach().float()
        return normalized

    @torch.no_grad()
    def neighbours(self, normalized: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k]: the rows most similar (cosine) to each of `normalized` [B, F], its own row
        `index` left out (so a drawn image is never its own neighbour)."""
        similarity = normalized @ self.features.t()
        similarity[torch.arange(len(index), device=index.device), index] = -torch.inf
        return similarity.topk(min(k, len(self.features) - 1), dim=1).indices
