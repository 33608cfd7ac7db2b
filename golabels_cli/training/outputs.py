"""The model's outputs on the run's own image sets, in eval mode: of cached backbone features under
--freeze-backbone, of the images otherwise."""

from __future__ import annotations

from typing import Any

import torch

from ..data import ImageSet, eval_loader, eval_transform
from ..inference import predict_outputs
from ..images import load_rgb
from ..models import Classifier
from .state import ROLE_NAMES, Training


@torch.no_grad()
def outputs(model: Classifier, inputs: torch.Tensor | ImageSet, t: Training, what: str = "predicting",
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, bottleneck features) on the CPU, of cached backbone features or of images."""
    if isinstance(inputs, torch.Tensor):
        return tuple(v.float().cpu() for v in model.classify(inputs.to(t.device)))
    loader = eval_loader(inputs, eval_transform(t.data_config), 2 * t.cfg.batch_size, t.workers, pin=t.speed.pin_memory)
    return predict_outputs(model, loader, t.device, t.speed.channels_last, t.speed.autocast, what)


def role_outputs(t: Training, role: str, images: ImageSet, indices: list[int] | None = None):
    """outputs() of one of the run's image sets (or the images at `indices` of it): of its cached
    backbone features under --freeze-backbone, `role` naming them ("source", "target", ...)."""
    if t.features is not None:
        values = t.features[role].values
        return outputs(t.model, values[indices] if indices is not None else values, t)
    return outputs(t.model, images.subset(indices) if indices is not None else images, t, f"evaluating: {ROLE_NAMES[role]}")


def class_counts(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """How many rows are predicted as each class."""
    return torch.bincount(logits.argmax(1), minlength=classes).float()


MOSAIC_IMAGES = 16


@torch.no_grad()
def target_predictions(t: Training) -> list[tuple[Any, str, float]]:
    """(image, predicted class, probability) of the first MOSAIC_IMAGES of the validators' fixed
    random sample of the target, by the model as it is now (the shipped one, in eval mode)."""
    indices = t.validation.target_sample[:MOSAIC_IMAGES] or list(range(min(MOSAIC_IMAGES, len(t.target))))
    was_training = t.model.training
    t.model.eval()
    try:
        probabilities = role_outputs(t, "target", t.target, indices)[0].softmax(1)
    finally:
        t.model.train(was_training)
    confidence, predicted = probabilities.max(1)
    return [(_thumbnail(t.target.paths[i]), t.source.classes[int(c)], float(p)) for i, c, p in zip(indices, predicted, confidence)]


def _thumbnail(path) -> Any:
    image = load_rgb(path)
    image.thumbnail((256, 256))  # a mosaic tile: a camera's full-size photo need not be held
    return image
