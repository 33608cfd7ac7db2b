"""One training step (forward, objective, backward), the batches of cached features it may train on, and the head start that
fits the head before the first step."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import train_sampler
from ..inference import autocast
from ..features import backbone_features, model_key
from ..methods import Objective, StepOutput
from ..models import Classifier
from .runtime import Speed
from .schedule import Schedule
from .state import Training

log = logging.getLogger("golabels")
HEAD_START_STREAM = 4  # the head start's own draws of the source (streams 0-3: training, validators)


@dataclass(frozen=True)
class Step:
    """One optimizer step, as the loop runs it: the forward pass (DDP-wrapped or compiled as the
    loop made it), the objective (methods/objective.py: every loss term and its weight), the
    optimizer and the settings of the device. It knows no method."""

    forward: Callable  # images or cached features -> (logits, features)
    objective: Objective
    optimizer: torch.optim.Optimizer
    device: torch.device
    speed: Speed
    per_domain: bool = False  # --forward per-domain: one pass per domain, BatchNorm on each domain's own batch
    grad_scaler: torch.amp.GradScaler | None = None  # --precision fp16

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None, coeff: float,
                 source_class_weights: torch.Tensor | None = None, target_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """A step on a source batch (and a target batch, whose rows are the target images
        `target_index`), each source image weighted by its class's weight if `source_class_weights`.
        Returns the objective's detached losses and statistics, still on the device (no host sync)."""
        device = self.device
        xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
        x = torch.cat([xs, xt.to(device, non_blocking=True)]) if xt is not None else xs
        if x.dim() == 4 and self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, self.speed.autocast):
            if xt is not None and self.per_domain:
                (logits_s, features_s), (logits_t, features_t) = self.forward(x[: len(xs)]), self.forward(x[len(xs):])
                logits, features = torch.cat([logits_s, logits_t]), torch.cat([features_s, features_t])
            else:
                logits, features = self.forward(x)
            row_weights = None
            if source_class_weights is not None:
                row_weights = source_class_weights[ys]
                if xt is not None:
                    row_weights = torch.cat([row_weights, torch.ones(len(logits) - len(ys), device=device)])
            index = target_index.to(device, non_blocking=True) if target_index is not None and xt is not None else None
            loss, logged, probe = self.objective(StepOutput(features, logits, ys, row_weights, index), coeff)
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)  # skipped when a gradient overflowed; the scale then shrinks
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if probe is not None and probe.norm is not None:
            logged["adv_grad_norm"] = probe.norm
        return logged


def step_of(t: Training, forward: Callable | None = None, objective: Objective | None = None) -> Step:
    """The step of a built run: the model's forward (the head's alone on cached features) and the
    run's objective unless others are given (the loop's DDP-wrapped or compiled ones)."""
    if forward is None:
        forward = t.model.classify if t.features is not None else t.model
    objective = objective if objective is not None else t.objective
    return Step(forward, objective, t.optimizer, t.device, t.speed, t.cfg.forward == "per-domain", t.grad_scaler)


class Classify(torch.nn.Module):
    """The part of the classifier after the backbone as a module of its own, so that DDP can wrap
    what --freeze-backbone trains."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, backbone_features: torch.Tensor):
        return self.model.classify(backbone_features)


def feature_batches(values: torch.Tensor, labels: torch.Tensor | None, batch_size: int, sampler):
    """Batches of cached features drawn by the same sampler as the images would be: (features,
    labels, the rows' indices in the set), as the image loaders give (images, labels, indices)."""
    draws = iter(sampler)
    while True:
        index = torch.tensor([next(draws).index for _ in range(batch_size)])
        yield values[index], (labels[index] if labels is not None else torch.full((batch_size,), -1)), index


def fit_head(t: Training) -> float:
    """--head-start: the bottleneck and head fitted to the source's labels on the pretrained
    backbone's cached features (eval mode, eval transform), cfg.head_start SGD steps at --lr with
    the scaled decay, before the first fine-tuning step. A randomly initialized head's first large
    gradients would otherwise reach the backbone and distort the pretrained features (LP-FT,
    Kumar et al. 2022). Returns the last step's loss."""
    cfg, device = t.cfg, t.device
    features = backbone_features(t.source, t.model.backbone, model_key(cfg.backbone, t.model.backbone, t.data_config),
                                 t.data_config, device, cfg.cache_dir, 2 * cfg.batch_size, t.workers,
                                 "--head-start: features of the source")
    sampler = train_sampler(t.source, cfg.seed, HEAD_START_STREAM, 0, t.dist.rank, t.dist.world,
                            t.source.labels if cfg.balance_source else None)
    params = [*t.model.bottleneck.parameters(), *t.model.head.parameters()]
    optimizer = torch.optim.SGD([{"params": params, "initial_lr": cfg.lr}], lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=True)
    schedule = Schedule.head_start(cfg)
    t.model.train()
    loss = torch.zeros(())
    batches = feature_batches(features.values, torch.tensor(t.source.labels), cfg.batch_size, sampler)
    for step in range(cfg.head_start):
        schedule.step_update(optimizer, step)
        x, y, _ = next(batches)
        logits, _ = t.model.classify(x.to(device))
        loss = F.cross_entropy(logits.float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = float(loss.detach())
    log.info("--head-start: bottleneck and head fitted on the backbone's features in %d steps (loss %.3f)", cfg.head_start, final)
    return final
