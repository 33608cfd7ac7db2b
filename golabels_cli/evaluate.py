"""`golabels eval`: a shipped model's accuracy on a labeled folder, matching classes by folder
name (the forward pass and the scoring are inference.py's, which training uses too)."""

from __future__ import annotations

from pathlib import Path

import torch

from .formats import csv_line
from .inference import EvalResult, evaluate_images, labeled_for_model, score


def evaluate(run_or_model: str | Path, data_dir: str | Path, device: str = "auto", batch_size: int = 64, workers: int = 0) -> EvalResult:
    from .checkpoint import load_model
    from .device import pick_device

    model, info = load_model(run_or_model)
    images, to_model = labeled_for_model(data_dir, info.classes)
    dev = pick_device(device)
    model = model.to(dev)
    cache = _frozen_backbone_cache(run_or_model)
    if cache is None:
        return evaluate_images(model, images, to_model, info.classes, info.data_config, dev, batch_size, workers)
    # The run never changed its backbone: its cached features are the backbone's output (eval mode,
    # eval transform), and only images not seen before go through it.
    from .features import backbone_features, model_key

    key = model_key(info.backbone, model.backbone, info.data_config)
    features = backbone_features(images, model.backbone, key, info.data_config, dev, cache, batch_size, workers, "eval: features")
    with torch.no_grad():
        logits = torch.cat([model.classify(chunk.to(dev))[0].float().cpu() for chunk in features.values.split(batch_size)])
    return score(images, to_model, info.classes, logits.argmax(1))


def _frozen_backbone_cache(run_or_model: str | Path) -> str | None:
    """The feature cache folder of a --freeze-backbone run ("" for the default one), None for
    any other model."""
    from .checkpoint import model_path
    from .yaml_files import run_config

    values = run_config(model_path(run_or_model).parent)
    if values.get("freeze_backbone") is not True:
        return None
    folder = values.get("cache_dir")
    return folder if isinstance(folder, str) else ""


def confusion_csv(result: EvalResult) -> str:
    lines = [csv_line(["true\\predicted", *result.predicted_classes])]
    for name, row in zip(result.true_classes, result.confusion):
        lines.append(csv_line([name, *map(str, row)]))
    return "".join(lines)
