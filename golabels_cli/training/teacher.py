"""A run taught by a teacher (--teacher MODEL; the student of --method auto --search-pick student):
the teacher's predictions on every target training image, refined by the target's own structure,
become soft labels the run learns from beside its recipe's losses.

    P      the teacher's softmax on the target (eval transform, eval mode); an ensemble's is the
           mean of its members'
    Z_m    each member's bottleneck features, L2-normalized (one member for a single model)
    N_m(i) the NEIGHBOURS target images nearest to image i in member m's space (cosine), i left out
    R_i  = mean_m mean_{j in N_m(i)} P_j                the labels the run learns from

Each label is the teacher's prediction of the image's nearest neighbours, in each member's learned
bottleneck space, rather than of the image itself: label propagation over the target's own
clusters (the neighbourhood consistency of NRC and AaD, Yang et al. 2021, 2022, as a fixed
relabelling; SHOT's centroids, Liang et al. 2020, are the coarser version of it). Measured against
those centroids in the members' spaces and in the backbone's, against the teacher's own
predictions and against hard labels (benchmarks/RESULTS.md, issue 52). The run's objective adds
teacher_weight * CE(R_i, p_i) on its target rows (methods/objective.py).

The labels are computed once, when the run is built, from the teacher model file and the
backbone's features of the target (the feature cache's, under --freeze-backbone); a checkpoint
keeps them, so a resumed run learns from the labels it started with, whatever the file is now.
The neighbours cost one [N, N] similarity per member, in blocks of BLOCK rows: 0.2 s for 3000
target images and four members of 256 features on two CPU cores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import load_model
from ..config import AdaptConfig
from ..data import ImageSet
from ..errors import InputError
from ..features import Features, model_key
from ..inference import cached_outputs

log = logging.getLogger("golabels")

NEIGHBOURS = 5
BLOCK = 1024


@dataclass(frozen=True)
class Teaching:
    """What a run learns from its teacher: `labels` [N, C], the refined soft label of each target
    training image; `record`, what summary.json says of the teacher; `model`, the teacher itself
    (in eval mode), to score it on the run's evaluation sets before the run lets it go."""

    labels: torch.Tensor
    record: dict[str, Any]
    model: torch.nn.Module


def teach(cfg: AdaptConfig, target: ImageSet, classes: list[str], device: torch.device, run_key: str,
          target_features: Features | None) -> Teaching:
    """The teacher's refined labels of `target`. Its backbone's features come from the run's own
    cached ones when it is the run's backbone (`run_key`), else from the feature cache."""
    model, info = load_model(cfg.teacher, calibrated=False)  # its labels as it was trained to give them
    if info.classes != classes:
        raise InputError(f"the teacher {cfg.teacher} has other classes than the source folder ({len(info.classes)} against "
                         f"{len(classes)}: {', '.join(info.classes[:3])} ...)", "pass a teacher trained on this source folder")
    model = model.to(device).eval()
    same_backbone = model_key(info.backbone, model.backbone, info.data_config) == run_key
    if target_features is not None and same_backbone:
        with torch.no_grad():
            outputs = [model.classify(chunk.to(device)) for chunk in target_features.values.split(2 * cfg.batch_size)]
        logits, features = torch.cat([o[0].float().cpu() for o in outputs]), torch.cat([o[1].float().cpu() for o in outputs])
    else:
        logits, features = cached_outputs(model, info, target, device, cfg.cache_dir, 2 * cfg.batch_size, cfg.resolved_workers(),
                                          "the teacher: features of the target")
    members = info.members or [info.method]
    probabilities = logits.softmax(1)
    labels = refine(probabilities, features.chunk(len(members), dim=1))
    changed = float((labels.argmax(1) != probabilities.argmax(1)).float().mean())
    record = {"model": str(cfg.teacher), "method": info.method, "members": members, "refined_changed": round(changed, 6),
              "confidence": round(float(probabilities.max(1).values.mean()), 6), "same_backbone": same_backbone}
    log.info("teacher %s: %.1f%% of %d target labels changed by their neighbours", Path(cfg.teacher).name, 100 * changed,
             len(labels))
    return Teaching(labels, record, model)


def refine(probabilities: torch.Tensor, member_features: tuple[torch.Tensor, ...], k: int = NEIGHBOURS) -> torch.Tensor:
    """R of the module's docstring: probabilities [N, C]; each member's features [N, F_m] -> [N, C].
    A target of one image has no neighbour: its label is the teacher's."""
    if len(probabilities) < 2:
        return probabilities
    return torch.stack([probabilities[nearest(z, k)].mean(1) for z in member_features]).mean(0)


def nearest(features: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k]: each row's k most similar other rows (cosine of the L2-normalized `features` [N, F]),
    computed BLOCK rows at a time (an [N, N] matrix of 50 000 images would take 10 GB)."""
    normalized = F.normalize(features.float(), dim=1)
    k = min(k, len(normalized) - 1)
    out = []
    for start in range(0, len(normalized), BLOCK):
        similarity = normalized[start:start + BLOCK] @ normalized.t()
        rows = torch.arange(len(similarity))
        similarity[rows, rows + start] = -torch.inf  # an image is not its own neighbour
        out.append(similarity.topk(k, dim=1).indices)
    return torch.cat(out)
