"""Evaluating a snapshot during training (the validators, the --eval-dir oracle, under the
BatchNorm statistics it will ship with) and keeping the one --select chooses. (Its label-shift
figures are target_estimate.py's.)"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..calibration import MIN_CALIBRATION_IMAGES, fit_temperature
from ..config import AdaptConfig
from ..data import ImageSet, scan_labeled, stratified_split
from ..images import first_time
from ..inference import autocast, cached_outputs, calibration_record, model_labels, score
from ..model_info import ModelInfo
from ..progress import batch_size as batch_size_of
from ..progress import tracked
from ..validators import LABEL_FREE, Outputs, better, compute_validators, metric_key
from .outputs import image_loader, role_outputs
from .state import LoopState, Training
from .target_estimate import shift_scores

log = logging.getLogger("golabels")


def validate(t: Training, state: LoopState) -> dict[str, Any]:
    """The validators of the current snapshot, and its --eval-dir accuracy (the oracle) if given,
    under the BatchNorm statistics it will ship with (--bn-stats)."""

    def outputs(role: str, images: ImageSet, indices: list[int] | None = None):
        return role_outputs(t, role, images, indices)

    was_training = t.model.training
    train_stats_acc = None
    t.model.eval()
    try:
        if t.cfg.bn_stats == "target" and t.eval_set is not None and reestimated_layers(t):
            # The oracle under training's running statistics too, for the measurement of --bn-stats.
            images, to_model = t.eval_set
            train_stats_acc = score(images, to_model, t.source.classes, outputs("eval", images)[0].argmax(1)).accuracy
        with target_batchnorm(t):
            scores = _validate_snapshot(t, state, outputs)
    finally:
        t.model.train(was_training)
    if train_stats_acc is not None:
        scores["target_acc_train_bn"] = train_stats_acc
    return scores


def validate_model(t: Training, model: torch.nn.Module) -> dict[str, Any]:
    """The label-free validators (and --eval-dir accuracy) of another model on the run's own
    evaluation sets, as the model is (its BatchNorm statistics its own): a teacher, beside the
    run it teaches. Its backbone must be the run's when the run reads cached features."""

    def outputs(role: str, images: ImageSet, indices: list[int] | None = None):
        return role_outputs(dataclasses.replace(t, model=model), role, images, indices)

    scores = _validate_snapshot(t, LoopState(), outputs)
    return {"validators": {k: scores.get(k) for k in LABEL_FREE}, "target_acc": scores.get("target_acc"),
            "target_mean_class_acc": scores.get("target_mean_class_acc")}


def _validate_snapshot(t: Training, state: LoopState, outputs: Callable) -> dict[str, Any]:
    """validate()'s figures, with the model in eval mode."""
    v = t.validation
    target_logits, target_features = outputs("target", t.target, v.target_sample)
    val_logits = val_features = val_labels = train_features = None
    if v.source_val is not None:
        val_logits, val_features = outputs("source_val", v.source_val)
        val_labels = torch.tensor(v.source_val.labels)
        train_features = outputs("source", t.source, v.train_sample)[1]
    scores: dict[str, Any] = compute_validators(Outputs(val_logits, val_labels, val_features, train_features,
                                                        target_logits, target_features))
    scores.update(shift_scores(t, state, target_logits, val_logits))
    if t.eval_set is not None:
        images, to_model = t.eval_set
        logits = outputs("eval", images)[0]
        result = score(images, to_model, t.source.classes, logits.argmax(1))
        scores["target_acc"] = result.accuracy
        scores["target_mean_class_acc"] = result.mean_class_accuracy
    return scores


def reestimated_layers(t: Training) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers --bn-stats target re-estimates: all of the classifier's, or under
    --freeze-backbone those after the cached features (a frozen backbone is never run here), and
    under --freeze-bn those after the backbone (whose statistics stay the pretrained ones)."""
    whole = t.features is None and not t.cfg.freeze_bn
    parts = [t.model] if whole else [t.model.bottleneck, t.model.head]
    return [m for part in parts for m in part.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def target_batchnorm(t: Training, keep: bool = False) -> Iterator[None]:
    """--bn-stats target: the classifier's BatchNorm running statistics re-estimated on the
    validators' fixed target sample (AdaBN, Li et al. 2016), as a plain average over the sample in
    batches, with every other layer in eval mode; training's own statistics are put back after
    the block unless `keep` (the shipped model). Under --freeze-backbone only the layers after
    the cached features (the bottleneck's) are re-estimated: the backbone's stay ImageNet's."""
    layers = reestimated_layers(t)
    if t.cfg.bn_stats != "target" or not layers:
        yield
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in layers]
    was_training = t.model.training
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        t.model.eval()
        for m in layers:
            m.train()
        _forward_target_sample(t)
        t.model.eval()
        yield
    finally:
        t.model.train(was_training)
        for m, (mean, var, tracked_batches, momentum) in zip(layers, saved):
            m.momentum = momentum
            if not keep:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked_batches)


@torch.no_grad()
def _forward_target_sample(t: Training) -> None:
    sample = t.validation.target_sample
    batch = 2 * t.cfg.batch_size
    if t.features is not None:
        values = t.features["target"].values[sample]
        for start in range(0, len(values), batch):
            if len(values[start:start + batch]) > 1:  # BatchNorm needs two rows
                t.model.classify(values[start:start + batch].to(t.device))
        return
    loader, prepare = image_loader(t, t.target.subset(sample), batch)
    for x, _ in tracked(loader, "BatchNorm statistics of the target", len(sample), batch_size_of):
        if len(x) < 2:
            continue
        x = x.to(t.device, non_blocking=True)
        if prepare is not None:
            x = prepare(x)
        if t.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(t.device, t.speed.autocast):
            t.model(x)


def keep_if_selected(t: Training, state: LoopState, it: int, scores: dict[str, Any]) -> None:
    """--select: remember this snapshot if its validator beats the best so far (ties keep the earlier)."""
    if t.cfg.select == "last":
        state.selected = {"iter": it, "value": None}
        return
    name = metric_key(t.cfg.select)
    value = scores.get(name)
    if not state.selected or better(name, value, state.selected.get("value")):
        if value is None:
            return  # a validator that could not be computed never selects
        state.selected = {"iter": it, "value": value}
        state.selected_weights = {k: v.detach().to("cpu", copy=True) for k, v in t.model.state_dict().items()}


@torch.no_grad()
def calibrate(t: Training) -> dict[str, Any] | None:
    """--calibrate source: the shipped model's temperature, fitted on the held-out source split
    (calibration.py), set on t.model; its calibration error there and, with --eval-dir, on the
    labeled target (the oracle), with and without it. None (temperature 1) without held-out images."""
    if t.cfg.calibrate != "source":
        return None
    v = t.validation
    if not _enough_to_calibrate(len(v.source_val or [])):
        return None
    was_training = t.model.training
    t.model.eval()
    try:
        record = _fitted(role_outputs(t, "source_val", v.source_val)[0].float(), torch.tensor(v.source_val.labels))
        temperature = record["temperature"]
        if t.eval_set is not None:
            images, to_model = t.eval_set
            eval_logits = role_outputs(t, "eval", images)[0].float()
            correct = eval_logits.argmax(1) == model_labels(images, to_model)
            record["eval"] = calibration_record(eval_logits / temperature, correct, temperature)
    finally:
        t.model.train(was_training)
    return record


def assembled_calibration(cfg: AdaptConfig, model: torch.nn.Module, info: ModelInfo, device: torch.device) -> dict[str, Any] | None:
    """calibrate() for a model the search assembles from its candidates' heads (an ensemble): its
    temperature fitted on the held-out source split its candidates held out (the same seed), read
    through the feature cache."""
    if cfg.calibrate != "source":
        return None
    scanned = scan_labeled(cfg.source, "source")
    held_out = stratified_split(scanned.labels, cfg.val_split, cfg.seed)[1]
    if not _enough_to_calibrate(len(held_out)):
        return None
    images = scanned.subset(held_out)
    logits = cached_outputs(model.to(device), info, images, device, cfg.cache_dir, 2 * cfg.batch_size)[0]
    return _fitted(logits, torch.tensor(images.labels))


def _fitted(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The temperature fitted on held-out source logits and labels, and their calibration error with and without it."""
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "images": len(labels),
            "source_val": calibration_record(logits / temperature, logits.argmax(1) == labels, temperature)}


def _enough_to_calibrate(held_out: int) -> bool:
    if held_out < MIN_CALIBRATION_IMAGES and first_time(("calibrate", held_out)):  # a search's candidates say it once
        log.info("confidences not calibrated: %d held-out source images, fewer than %d (--val-split)", held_out, MIN_CALIBRATION_IMAGES)
    return held_out >= MIN_CALIBRATION_IMAGES
