"""A run's config resolved once, before anything is built: the device, the folders, and the
defaults that follow them (the balancing of an imbalanced source folder, the backbone's own input
size), with every check they need. `build` and the loop read the result and never change it; the
config a caller passes in is never changed either (the resolution works on a copy)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..choices import AUTO_METHOD, BASELINE, parse_recipe_name
from ..config import AdaptConfig, check_resources, resolve_balancing
from ..data import ImageSet, class_counts, data_report, imbalance_ratio, sample_indices, scan_labeled, scan_unlabeled, stratified_split
from ..device import pick_device
from ..distributed import SINGLE, Dist
from ..errors import InputError
from ..images import first_time, require_regular
from ..inference import labeled_for_model
from ..models import WEIGHTS_HINT, check_backbone_name, resolve_data_config
from ..progress import DataRead, no_events
from ..remedies import IMBALANCE_WARNING, remedy_flags, remedy_hint
from ..validators import NEED_HELD_OUT_SOURCE
from .state import Progress, Validation
from .threads import threads_without_measuring

log = logging.getLogger("golabels")


@dataclass(frozen=True)
class Folders:
    """The run's images, each folder read and checked once."""

    source: ImageSet  # the training split of the source folder
    target: ImageSet
    eval_set: tuple[ImageSet, list[int]] | None  # --eval-dir, and its labels as the model's class indices
    validation: Validation
    report: dict[str, Any]  # data_report() of the folders


@dataclass(frozen=True)
class ResolvedRun:
    cfg: AdaptConfig  # every default resolved: what config.yaml and the checkpoint hold
    device: torch.device
    folders: Folders


def resolve_run(cfg: AdaptConfig, d: Dist = SINGLE, progress: Progress = no_events, device: torch.device | None = None) -> ResolvedRun:
    """Check every input a run reads and resolve what follows from them; nothing slow, nothing
    written. The data report goes to `progress` ("data") as soon as the folders are read.
    `device`: --device as already picked (the process group is set up on its kind)."""
    device = _device(cfg, d, device or pick_device(cfg.device))
    check_backbone_name(cfg.backbone)
    if cfg.weights is not None:  # before the folders are scanned: a FIFO or /dev/zero would block or never end
        require_regular(cfg.weights, "weights file", WEIGHTS_HINT)
    cfg = copy.copy(cfg)
    folders = _folders(cfg, d, progress)
    _resolve_input_size(cfg)
    return ResolvedRun(cfg, device, folders)


def resolve_config(cfg: AdaptConfig) -> AdaptConfig:
    """cfg as the run will write it to config.yaml (`adapt --print-config`): the defaults that
    depend on the source folder and on the backbone resolved, on a copy. Scans the source folder
    and builds the backbone without weights (on the meta device); trains nothing."""
    check_backbone_name(cfg.backbone)
    cfg = copy.copy(cfg)
    resolve_balancing(cfg, imbalance_ratio(class_counts(scan_labeled(cfg.source, "source"))) > IMBALANCE_WARNING)
    _resolve_input_size(cfg, check_memory=False)  # a config may be written here to run on a larger machine
    # null: measured when the run starts; the device as auto would pick it here, without the checks
    # pick_device makes (a config may be written here for a GPU machine)
    device = torch.device("cpu" if cfg.device == "auto" and not (torch.cuda.is_available() or torch.backends.mps.is_available())
                          else "cuda" if cfg.device == "auto" else cfg.device)
    cfg.threads = threads_without_measuring(cfg, device)
    return cfg


def with_input_size(cfg: AdaptConfig) -> AdaptConfig:
    """cfg with --image-size resolved from the backbone when it was left out, as a run writes it
    (a search's own config.yaml, so that it says what --print-config says)."""
    cfg = copy.copy(cfg)
    _resolve_input_size(cfg, check_memory=False)
    return cfg


def _resolve_input_size(cfg: AdaptConfig, check_memory: bool = True) -> None:
    """--image-size left to the backbone: its own input size, written down (a square one: the only
    kind --image-size can give back; the same data config either way); and whether one training
    step at the input size fits in this machine's memory. The backbone is made on the meta device:
    no weights, no time."""
    import timm

    height = width = cfg.image_size
    if cfg.image_size is None:
        with torch.device("meta"):
            backbone = timm.create_model(cfg.backbone, pretrained=False, num_classes=0)
        _, height, width = resolve_data_config(backbone, None)["input_size"]
    if check_memory:
        check_resources(cfg, (height, width))
    if cfg.image_size is None and height == width:
        cfg.image_size = height


def _device(cfg: AdaptConfig, d: Dist, device: torch.device) -> torch.device:
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if cfg.sync_bn and d.enabled and device.type != "cuda":
        raise InputError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm synchronizes GPU tensors only", "leave --sync-bn out on the CPU")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise InputError(f"--precision fp16 needs a CUDA GPU, and this run is on {device.type}", "use --precision bf16 or fp32")
    return device


def _imbalance_hint(cfg: AdaptConfig, by_default: list[str]) -> str | None:
    """The end of the imbalance warning for the recipe that runs: what it already uses, or what to
    try; None for a recipe without a discriminator, whose training the imbalance does not pull
    (what was measured, docs/label-shift.md, is adversarial alignment's)."""
    if cfg.method == AUTO_METHOD:  # each candidate says it for itself
        return None
    recipe = parse_recipe_name(cfg.method)
    return remedy_hint(remedy_flags(cfg), by_default) if recipe.adversarial else None


def _small_target_hint(cfg: AdaptConfig) -> str | None:
    """The end of the small-target warning for the recipe that runs; None for one that does not
    adapt (source-only). A search's adapting candidates all say the same, once (first_time)."""
    return f"add target images, or train --method {BASELINE}" if parse_recipe_name(cfg.method).uses_target else None


def _folders(cfg: AdaptConfig, d: Dist, progress: Progress) -> Folders:
    """The run's folders, each checked, and --balance-source/--balance-target resolved in `cfg` (a
    copy) from the source's class counts; the report goes to `progress` before anything slow."""
    scanned = scan_labeled(cfg.source, "source")
    if len(scanned.classes) < 2:
        raise InputError(f"source folder {cfg.source} has only one class ({scanned.classes[0]!r})", "a classifier needs at least two class "
                                                                                                    "folders")
    target = scan_unlabeled(cfg.target, "target")
    eval_set = labeled_for_model(cfg.eval_dir, scanned.classes, "eval") if cfg.eval_dir else None
    train_idx, val_idx = stratified_split(scanned.labels, cfg.val_split, cfg.seed)
    by_default = resolve_balancing(cfg, imbalance_ratio(class_counts(scanned)) > IMBALANCE_WARNING)
    report = data_report(scanned, target, val_idx, _imbalance_hint(cfg, by_default), _small_target_hint(cfg))
    for warning in report["warnings"]:
        if first_time(warning):  # the candidates of a search say it once
            log.warning(warning)
    progress(DataRead(report, len(val_idx)))
    source = scanned.subset(train_idx, keep_skipped=True)
    if cfg.select in NEED_HELD_OUT_SOURCE and len(val_idx) < 2:
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
    return Folders(source, target, eval_set, validation, report)
