"""Building a run from its resolved config (resolve.py): the model, discriminator and optimizer
made, the feature cache filled. Nothing is written to the run directory here."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..config import AdaptConfig
from ..data import ImageSet, decode_all
from ..decoded import decode_images
from ..distributed import SINGLE, Dist, lr_factor
from ..features import backbone_features, model_key
from ..methods import MultilinearMap, Objective, TargetBank, get_method, get_recipe
from ..models import Classifier, create_backbone, resolve_data_config
from ..progress import no_events
from .resolve import resolve_run
from .selection import validate_model
from .teacher import teach
from .runtime import seed_everything, speed_settings
from .threads import resolve_threads
from .state import ROLE_NAMES, Progress, Training

log = logging.getLogger("golabels")


def build(cfg: AdaptConfig, d: Dist = SINGLE, progress: Progress = no_events, device: torch.device | None = None) -> Training:
    """Resolve the config (resolve.resolve_run: every input checked, the folders read) and build
    the model and optimizer from it; nothing is written. The data report goes to `progress`
    ("data") as soon as the folders are read, before any slow step. `t.cfg` is the resolved config."""
    run = resolve_run(cfg, d, progress, device)
    cfg, device, folders = run.cfg, run.device, run.folders
    source, target, eval_set, validation, report = folders.source, folders.target, folders.eval_set, folders.validation, folders.report
    seed_everything(cfg.seed)
    recipe = get_recipe(cfg.method)
    spec = recipe.alignment
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.weights)
    data_config = resolve_data_config(backbone, cfg.image_size)
    model = _classifier(cfg, backbone, len(source.classes), d).to(device)
    disc = None
    if spec.adversarial or not recipe.target_losses:
        disc = spec.discriminator(_discriminator_input_dim(cfg, len(source.classes)), cfg.disc_hidden, cfg.discriminator).to(device)
    multilinear = None
    if spec.conditioned:
        multilinear = MultilinearMap(cfg.bottleneck_dim, len(source.classes), torch.Generator().manual_seed(cfg.seed),
                                     cfg.cdan_map).to(device)

    # Measured before anything slow (the features), so the probe sees the machine the steps will run on.
    if cfg.freeze_backbone:  # a step trains the bottleneck and head on cached features
        trained, input_shape = torch.nn.Sequential(model.bottleneck, model.head), (model.backbone.num_features,)
    else:
        trained, input_shape = model, (3, *data_config["input_size"][1:])
    cfg = dataclasses.replace(cfg, threads=resolve_threads(cfg, device, trained, disc if spec.adversarial else None, input_shape))
    speed = speed_settings(device, cfg)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    torch.backends.cudnn.deterministic = cfg.deterministic
    optimizer = _optimizer(cfg, model, disc if spec.adversarial else None, d, speed.fused_optimizer)
    bank = None
    if any(loss.bank for loss in recipe.target_losses):  # filled before the first step (loop.fill_bank), or from the checkpoint
        bank = TargetBank(len(target), cfg.bottleneck_dim, len(source.classes)).to(device)
    objective = Objective(spec, disc if spec.adversarial else None, multilinear, model.head, recipe.target_losses, cfg.trade_off,
                          cfg.target_loss_weight, cfg.domain_labels, {name: getattr(cfg, name) for name in recipe.options}, bank)
    frozen_key = None
    if not cfg.freeze_backbone and device.type == "cpu" and (cfg.pretrained or cfg.weights):
        frozen_key = model_key(cfg.backbone, model.backbone, data_config)
    workers = cfg.resolved_workers()
    features = decoded = None
    if cfg.freeze_backbone:
        sets = {"source": source, **({"source_val": validation.source_val} if validation.source_val else {}),
                "target": target, **({"eval": eval_set[0]} if eval_set else {})}
        features = _cached_features(cfg, model.backbone, data_config, device, workers, sets)
    teaching = None
    if cfg.teacher is not None:
        teaching = teach(cfg, target, source.classes, device, model_key(cfg.backbone, model.backbone, data_config),
                         features["target"] if features is not None else None)
        objective = objective.replaced(teacher=teaching.labels.to(device), teacher_weight=cfg.teacher_weight)
    elif cfg.augment == "batched":
        decoded = {"source": decode_images(source, data_config, cfg.cache_dir, "decoding the source", workers or 1),
                   "target": decode_images(target, data_config, cfg.cache_dir, "decoding the target",
                                           workers or 1) if recipe.uses_target else None}
    elif cfg.cache_images:
        decoded = {"source": decode_all(source, data_config), "target": decode_all(target, data_config) if recipe.uses_target else None}
    t = Training(cfg, device, source, target, eval_set, validation, report, data_config, model, disc, multilinear, objective, optimizer,
                 speed, d, features, decoded, torch.amp.GradScaler(device.type) if speed.loss_scaling else None, frozen_key,
                 teaching.record if teaching is not None else None)
    if teaching is not None and d.main and (features is None or teaching.record["same_backbone"]):
        teaching.record.update(validate_model(t, teaching.model))  # the figures the student is compared with
    return t


def _classifier(cfg: AdaptConfig, backbone: torch.nn.Module, classes: int, d: Dist) -> torch.nn.Module:
    model = Classifier(backbone, classes, cfg.bottleneck_dim, bridged=get_method(cfg.method).bridged_head)
    model.backbone_bn_frozen = cfg.freeze_bn
    if cfg.sync_bn and d.enabled:
        # Same parameters and state-dict keys: checkpoints load into a plain BatchNorm model.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _discriminator_input_dim(cfg: AdaptConfig, classes: int) -> int:
    spec = get_method(cfg.method)
    if spec.adversarial:
        return spec.discriminator_input_dim(cfg.bottleneck_dim, classes, cfg.cdan_map)
    # source-only trains no discriminator, but builds the one golabels has always built for it (the
    # conditioned input's size): its initialization draws from the generator the loaders draw from
    # next, so source-only runs stay the runs they were, and their checkpoints hold it.
    return get_method("cdan").discriminator_input_dim(cfg.bottleneck_dim, classes, cfg.cdan_map)


def _optimizer(cfg: AdaptConfig, model: Classifier, disc: torch.nn.Module | None, d: Dist, fused: bool) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum over the new layers at --lr, the backbone (unless frozen) at
    --backbone-lr-mult times it when pretrained, and the discriminator when there is one."""
    # Pretrained features move slowly (TLlib's recipe); features learned from scratch need the full rate.
    backbone_mult = cfg.backbone_lr_mult if (cfg.pretrained or cfg.weights) else 1.0
    groups = [{"params": list(model.bottleneck.parameters()) + list(model.head.parameters()), "initial_lr": cfg.lr}]
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
        if not (cfg.pretrained or cfg.weights):
            log.warning("--freeze-backbone on a random backbone gives noise features; pass --weights or --pretrained")
    else:
        groups.insert(0, {"params": list(model.backbone.parameters()), "initial_lr": cfg.lr * backbone_mult})
    if disc is not None:
        groups.append({"params": list(disc.parameters()), "initial_lr": cfg.lr})
    for g in groups:
        g["base_lr"] = g["initial_lr"]  # before --lr-scaling: a run resumed on another process count rescales it
        g["initial_lr"] *= lr_factor(cfg.lr_scaling, d.world)
        g["lr"] = g["initial_lr"]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                           **({"fused": True} if fused else {}))


def _cached_features(cfg: AdaptConfig, backbone: torch.nn.Module, data_config: dict, device: torch.device, workers: int,
                     sets: dict[str, ImageSet]) -> dict:
    """--freeze-backbone: the backbone's features of every image set of the run, from the cache or computed."""
    key = model_key(cfg.backbone, backbone, data_config)
    return {role: backbone_features(images, backbone, key, data_config, device, cfg.cache_dir, 2 * cfg.batch_size, workers,
                                    f"features: {ROLE_NAMES[role]}")
            for role, images in sets.items()}
