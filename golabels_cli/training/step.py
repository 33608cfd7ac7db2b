"""One training step, its learning rate, the batches of cached features it may train on, and the
head start that fits the head before the first step."""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import AdaptConfig
from ..data import train_sampler
from ..inference import autocast
from ..features import backbone_features, model_key
from ..methods import Adversary, Batch, adversarial_loss
from ..models import Classifier
from .state import Training

log = logging.getLogger("golabels")
HEAD_START_STREAM = 4  # the head start's own draws of the source (streams 0-3: training, validators)


def set_lr(optimizer: torch.optim.Optimizer, cfg: AdaptConfig, step: int, scale: float) -> float:
    """lr x (1 + gamma x step)^-decay on every parameter group; returns the new layers' rate."""
    factor = (1.0 + cfg.resolved_lr_gamma() * step) ** (-cfg.lr_decay)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return cfg.lr * scale * factor


def train_step(t: Training, forward: Callable, disc: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None,
               domain: torch.Tensor, coeff: float, source_class_weights: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on a source batch (and a target batch):
    CE + trade_off * L_adv + L_extra + target_loss_weight * L_target, each source image weighted by
    its class's weight in CE and L_adv if `source_class_weights`. Returns the detached losses
    (cls, adv, extra, target) and statistics, still on the device (no host sync)."""
    cfg, device = t.cfg, t.device
    xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
    x = torch.cat([xs, xt.to(device, non_blocking=True)]) if xt is not None else xs
    if x.dim() == 4 and t.speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, t.speed.autocast):
        if xt is not None and cfg.forward == "per-domain":
            # BatchNorm normalizes each domain's batch with that domain's own statistics.
            (logits_s, features_s), (logits_t, features_t) = forward(x[: len(xs)]), forward(x[len(xs):])
            logits, features = torch.cat([logits_s, logits_t]), torch.cat([features_s, features_t])
        else:
            logits, features = forward(x)
        row_weights = None
        if source_class_weights is None:
            loss_cls = F.cross_entropy(logits[: len(ys)].float(), ys)
        else:
            source_weights = source_class_weights[ys]
            loss_cls = (source_weights * F.cross_entropy(logits[: len(ys)].float(), ys, reduction="none")).mean()
            if xt is not None:
                row_weights = torch.cat([source_weights, torch.ones(len(logits) - len(ys), device=device)])
        probe: dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=device)
        loss_adv, loss_extra, loss_target, stats = zero, zero, zero, {}
        if xt is not None and t.adversarial:
            adversary = Adversary(t.method, disc, t.multilinear, t.model.head, t.method_options)
            loss_adv, loss_extra, stats = adversarial_loss(adversary, Batch(features, logits, domain, row_weights), cfg.domain_labels,
                                                           coeff, probe)
        if xt is not None and t.recipe.target_losses:
            loss_target = t.recipe.target_loss(logits[len(ys):], t.method_options)
        loss = loss_cls + cfg.trade_off * loss_adv + loss_extra + cfg.target_loss_weight * loss_target
    t.optimizer.zero_grad(set_to_none=True)
    if t.grad_scaler is not None:
        t.grad_scaler.scale(loss).backward()
        t.grad_scaler.step(t.optimizer)  # skipped when a gradient overflowed; the scale then shrinks
        t.grad_scaler.update()
    else:
        loss.backward()
        t.optimizer.step()
    if "norm" in probe:
        stats["adv_grad_norm"] = probe["norm"]
    return loss_cls.detach(), loss_adv.detach(), loss_extra.detach(), loss_target.detach(), stats


class Classify(torch.nn.Module):
    """The part of the classifier after the backbone as a module of its own, so that DDP can wrap
    what --freeze-backbone trains."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, backbone_features: torch.Tensor):
        return self.model.classify(backbone_features)


def feature_batches(values: torch.Tensor, labels: torch.Tensor | None, batch_size: int, sampler):
    """Batches of cached features drawn by the same sampler as the images would be."""
    draws = iter(sampler)
    while True:
        index = torch.tensor([next(draws).index for _ in range(batch_size)])
        yield values[index], (labels[index] if labels is not None else torch.full((batch_size,), -1))


def fit_head(t: Training) -> float:
    """--head-start: the bottleneck and head fitted to the source's labels on the pretrained
    backbone's cached features (eval mode, eval transform), cfg.head_start SGD steps at --lr with
    the scaled decay, before the first fine-tuning step. A randomly initialized head's first large
    gradients would otherwise reach the backbone and distort the pretrained features (LP-FT,
    Kumar et al. 2022). Returns the last step's loss."""
    cfg, device = t.cfg, t.device
    features = backbone_features(t.source, t.model.backbone, model_key(cfg.backbone, t.model.backbone, t.data_config),
                                 t.data_config, device, cfg.cache_dir, 2 * cfg.batch_size, t.workers, "--head-start: features of the source")
    sampler = train_sampler(t.source, cfg.seed, HEAD_START_STREAM, 0, t.dist.rank, t.dist.world,
                            t.source.labels if cfg.balance_source else None)
    params = [*t.model.bottleneck.parameters(), *t.model.head.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    t.model.train()
    loss = torch.zeros(())
    batches = feature_batches(features.values, torch.tensor(t.source.labels), cfg.batch_size, sampler)
    for step in range(cfg.head_start):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * (1 + 20 / cfg.head_start * step) ** -cfg.lr_decay
        x, y = next(batches)
        logits, _ = t.model.classify(x.to(device))
        loss = F.cross_entropy(logits.float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = float(loss.detach())
    log.info("--head-start: bottleneck and head fitted on the backbone's features in %d steps (loss %.3f)", cfg.head_start, final)
    return final
