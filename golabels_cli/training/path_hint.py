"""The CPU trap: fine-tuning a whole backbone on a CPU takes hours to days, and --freeze-backbone,
which trains on the backbone's features computed once, takes minutes (docs/performance.md).

After the first step of a session that fine-tunes on a CPU, both are measured from the run's own
data: the step that just ran gives the fine-tuning ETA, and one forward pass of the backbone over
the same source batch, plus a copied head and discriminator trained one step on its features,
give what the frozen path would take:

    frozen ~ images not in the feature cache x (forward seconds / batch) + iters x (step seconds on features)

The measurement touches nothing the run keeps: the backbone runs in eval mode without gradients,
the head and discriminator are copies, and the random generators are restored after it, so the
weights are the same whether the hint was shown or not.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from ..choices import AUTO_METHOD
from ..features import cached_count
from ..models import input_width
from ..options import FROZEN_BACKBONE_METHOD, FROZEN_ITERS, SEARCH_COST, TRAINED_BACKBONE_METHOD, TRAINED_ITERS
from ..progress import FrozenPathHint
from .state import Training

HINT_ABOVE_S = 20 * 60  # a fine-tuning run that ends within this needs no hint
HINT_RATIO = 3.0  # nor one the frozen path would not make at least this much shorter


def frozen_path_hint(t: Training, xs: torch.Tensor, step_seconds: float, iters_left: int) -> FrozenPathHint | None:
    """The hint when this run fine-tunes on a CPU and would take far longer than the frozen path; None otherwise."""
    cfg = t.cfg
    if t.device.type != "cpu" or t.features is not None or step_seconds * iters_left < HINT_ABOVE_S:
        return None
    if not (cfg.pretrained or cfg.weights):
        return None  # a backbone from random init has no features worth freezing
    with torch.random.fork_rng(devices=[]):
        forward_s, features = _backbone_forward(t, xs)
        head_step_s = _head_step(t, features)
    sets = [t.source, t.target, *([t.validation.source_val] if t.validation.source_val else []), *([t.eval_set[0]] if t.eval_set else [])]
    # what the cache already holds for these weights (an earlier --freeze-backbone run) is not computed again
    images = sum(len(images) - (cached_count(images, t.frozen_key, cfg.cache_dir) if t.frozen_key else 0) for images in sets)
    features_s = images * forward_s / len(xs)
    # The frozen path's default is a search (--method auto): its candidates cost about SEARCH_COST runs.
    runs = SEARCH_COST if cfg.method == TRAINED_BACKBONE_METHOD and FROZEN_BACKBONE_METHOD == AUTO_METHOD else 1.0
    # The new run with --freeze-backbone added runs its own default length unless --iters was given.
    frozen_iters = FROZEN_ITERS if cfg.iters == TRAINED_ITERS else cfg.iters
    frozen_s = features_s + frozen_iters * head_step_s * runs
    if step_seconds * iters_left < HINT_RATIO * frozen_s:
        return None
    return FrozenPathHint(step_seconds * iters_left, iters_left, frozen_s, features_s, images, frozen_iters)


def _backbone_forward(t: Training, xs: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one forward pass of the backbone over xs, as the feature cache runs it, and its output."""
    backbone = t.model.backbone
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        started = time.perf_counter()
        with torch.no_grad():
            features = backbone(xs.to(t.device))
        return time.perf_counter() - started, features.float()
    finally:
        for m, mode in modes.items():
            m.training = mode


def _head_step(t: Training, features: torch.Tensor, repeats: int = 3) -> float:
    """Seconds of an optimizer step of copies of the bottleneck, head and discriminator on a step's
    worth of features (source and target rows), the fastest of `repeats`."""
    head = copy.deepcopy(torch.nn.Sequential(t.model.bottleneck, t.model.head)).train()
    disc = copy.deepcopy(t.disc).train() if t.disc is not None else None
    params = [*head.parameters(), *(disc.parameters() if disc is not None else ())]
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=t.cfg.momentum, weight_decay=t.cfg.weight_decay, nesterov=True)
    rows = features.repeat(2 if t.recipe.uses_target else 1, 1)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        hidden = head[0](rows)
        loss = F.cross_entropy(head[1](hidden), torch.zeros(len(rows), dtype=torch.long))
        if disc is not None:
            # CDAN's discriminator reads features x predictions: sized like the bottleneck's here, a lower bound
            logits = disc(hidden if input_width(disc) == hidden.shape[1] else torch.zeros(len(rows), input_width(disc)))[0]
            loss = loss + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss.backward()
        optimizer.step()
        best = min(best, time.perf_counter() - started)
    return best
