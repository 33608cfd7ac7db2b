"""Building a run from its config: every input checked, the model, discriminator and optimizer
made, the feature cache filled. Nothing is written to the run directory here."""

from __future__ import annotations

import logging

import torch

from ..config import AdaptConfig, check_resources, resolve_balancing
from ..data import (ImageSet, class_counts, data_report, decode_all, imbalance_ratio, sample_indices, scan_labeled, scan_unlabeled,
                    stratified_split)
from ..device import pick_device
from ..distributed import SINGLE, Dist, lr_factor
from ..errors import InputError
from ..inference import labeled_for_model
from ..features import backbone_features, model_key
from ..methods import MultilinearMap, get_method, get_recipe
from ..images import require_regular
from ..models import WEIGHTS_HINT, Classifier, check_backbone_name, create_backbone, resolve_data_config
from ..progress import DataRead, no_events
from ..remedies import IMBALANCE_WARNING, remedy_flags, remedy_hint
from .runtime import seed_everything, speed_settings
from .state import ROLE_NAMES, Progress, Training, Validation

log = logging.getLogger("golabels")


def resolve_config(cfg: AdaptConfig) -> AdaptConfig:
    """cfg as the run will write it to config.yaml: the defaults that depend on the source folder
    (the balancing of an imbalanced one) and on the backbone (its input size) resolved. Scans the
    source folder and builds the backbone without weights (on the meta device); trains nothing."""
    import timm

    check_backbone_name(cfg.backbone)
    resolve_balancing(cfg, imbalance_ratio(class_counts(scan_labeled(cfg.source, "source"))) > IMBALANCE_WARNING)
    if cfg.image_size is None:
        with torch.device("meta"):
            backbone = timm.create_model(cfg.backbone, pretrained=False, num_classes=0)
        resolve_image_size(cfg, resolve_data_config(backbone, None))
    return cfg


def resolve_image_size(cfg: AdaptConfig, data_config: dict) -> None:
    """--image-size left to the backbone: its own input size, written down (a square one: the only
    kind --image-size can give back; the same data config either way)."""
    _, height, width = data_config["input_size"]
    if cfg.image_size is None and height == width:
        cfg.image_size = height


def build(cfg: AdaptConfig, d: Dist = SINGLE, progress: Progress = no_events) -> Training:
    """Check every input and build the model and optimizer; nothing is written. The data report
    goes to `progress` ("data") as soon as the folders are read, before any slow step."""
    device = _device(cfg, d)
    check_backbone_name(cfg.backbone)
    if cfg.weights is not None:  # before the folders are scanned: a FIFO or /dev/zero would block or never end
        require_regular(cfg.weights, "weights file", WEIGHTS_HINT)
    source, target, eval_set, validation, report = _folders(cfg, d, progress)

    seed_everything(cfg.seed)
    recipe = get_recipe(cfg.method)
    spec = recipe.alignment
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.weights)
    data_config = resolve_data_config(backbone, cfg.image_size)
    check_resources(cfg, tuple(data_config["input_size"][1:]))
    resolve_image_size(cfg, data_config)
    model = _classifier(cfg, backbone, len(source.classes), d).to(device)
    disc = None
    if spec.adversarial or not recipe.target_losses:
        disc = spec.discriminator(_discriminator_input_dim(cfg, len(source.classes)), cfg.disc_hidden, cfg.discriminator).to(device)
    multilinear = None
    if spec.conditioned:
        multilinear = MultilinearMap(cfg.bottleneck_dim, len(source.classes), torch.Generator().manual_seed(cfg.seed), cfg.cdan_map).to(device)

    speed = speed_settings(device, cfg)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    torch.backends.cudnn.deterministic = cfg.deterministic
    optimizer = _optimizer(cfg, model, disc if spec.adversarial else None, d, speed.fused_optimizer)
    t = Training(cfg, device, source, target, eval_set, validation, report, data_config, model, disc, multilinear, optimizer, speed, d)
    if speed.loss_scaling:
        t.grad_scaler = torch.amp.GradScaler(device.type)
    if cfg.freeze_backbone:
        t.features = _cached_features(t)
    elif cfg.cache_images:
        t.decoded = {"source": decode_all(source, data_config), "target": decode_all(target, data_config) if t.uses_target else None}
    return t


def _device(cfg: AdaptConfig, d: Dist) -> torch.device:
    device = pick_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if cfg.sync_bn and d.enabled and device.type != "cuda":
        raise InputError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm synchronizes GPU tensors only", "leave --sync-bn out on the CPU")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise InputError(f"--precision fp16 needs a CUDA GPU, and this run is on {device.type}", "use --precision bf16 or fp32")
    return device


def _folders(cfg: AdaptConfig, d: Dist, progress: Progress):
    """(training source, target, --eval-dir set, what the validators see, the data report) of the
    run's folders, each checked; the report goes to `progress` before anything slow."""
    scanned = scan_labeled(cfg.source, "source")
    if len(scanned.classes) < 2:
        raise InputError(f"source folder {cfg.source} has only one class ({scanned.classes[0]!r})", "a classifier needs at least two class folders")
    target = scan_unlabeled(cfg.target, "target")
    eval_set = labeled_for_model(cfg.eval_dir, scanned.classes, "eval") if cfg.eval_dir else None
    train_idx, val_idx = stratified_split(scanned.labels, cfg.val_split, cfg.seed)
    by_default = resolve_balancing(cfg, imbalance_ratio(class_counts(scanned)) > IMBALANCE_WARNING)
    report = data_report(scanned, target, val_idx, remedy_hint(remedy_flags(cfg), by_default))
    for warning in report["warnings"]:
        log.warning(warning)
    progress(DataRead(report, len(val_idx)))
    source = scanned.subset(train_idx, keep_skipped=True)
    if cfg.select in ("src-acc", "dev") and len(val_idx) < 2:
        raise InputError(f"--select {cfg.select} needs held-out source images, and --val-split {cfg.val_split} holds out {len(val_idx)}",
                         "raise --val-split, or select by another validator")
    for role, images in (("source", source), ("target", target)):
        if len(images) < d.world:
            raise InputError(f"the {role} folder's {len(images)} images cannot be shared by {d.world} processes", "use fewer --devices")
    validation = Validation(
        scanned.subset(val_idx) if val_idx else None,
        sample_indices(len(target), cfg.val_target_images, cfg.seed, 2),
        sample_indices(len(source), min(len(val_idx), cfg.val_target_images or len(val_idx)), cfg.seed, 3) if val_idx else [],
    )
    return source, target, eval_set, validation, report


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
            log.warning("--freeze-backbone with a randomly initialized backbone: its features are random; pass --weights or --pretrained")
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


def _cached_features(t: Training) -> dict:
    """--freeze-backbone: the backbone's features of every image set of the run, from the cache or computed."""
    cfg, model = t.cfg, t.model
    key = model_key(cfg.backbone, model.backbone, t.data_config)
    sets: dict[str, ImageSet] = {"source": t.source, **({"source_val": t.validation.source_val} if t.validation.source_val else {}),
                                 "target": t.target, **({"eval": t.eval_set[0]} if t.eval_set else {})}
    return {role: backbone_features(images, model.backbone, key, t.data_config, t.device, cfg.cache_dir, 2 * cfg.batch_size,
                                    t.workers, f"features: {ROLE_NAMES[role]}")
            for role, images in sets.items()}
