"""The model's outputs on the run's own image sets, in eval mode: of cached backbone features under
--freeze-backbone, of the images otherwise."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ..data import ImageSet, eval_loader, eval_transform, sample_indices
from ..decoded import DecodedImages
from ..device_batches import DecodedCenterCrops, center_crops_fit, normalize_like_eval
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
    loader, prepare = image_loader(t, inputs, 2 * t.cfg.batch_size)
    return predict_outputs(model, loader, t.device, t.speed.channels_last, t.speed.autocast, what, prepare)


def image_loader(t: Training, images: ImageSet, batch_size: int) -> tuple[DataLoader, Callable | None]:
    """(loader, prepare) of eval-transformed images: from the run's decoded training images
    (--augment batched) when it holds every one of them and their center crop is eval's, the
    normalization then done on the device by `prepare`; else decoded from the files."""
    decoded = {k: v for k, v in (t.decoded or {}).items() if isinstance(v, DecodedImages)}
    if decoded and center_crops_fit(t.data_config):
        where = {str(p): (decoded[role], i) for role, folder in (("source", t.source), ("target", t.target)) if role in decoded
                 for i, p in enumerate(folder.paths)}
        sources = [where.get(str(p)) for p in images.paths]
        if all(s is not None for s in sources):
            dataset = DecodedCenterCrops(sources, images.labels, tuple(t.data_config["input_size"][-2:]))
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=t.workers if not decoded_in_memory(decoded) else 0,
                                pin_memory=t.speed.pin_memory)
            return loader, normalize_like_eval(t.data_config, t.device)
    return eval_loader(images, eval_transform(t.data_config), batch_size, t.workers, pin=t.speed.pin_memory), None


def decoded_in_memory(decoded: dict[str, DecodedImages]) -> bool:
    # in memory a crop is a copy: loader processes would cost more to start than they save
    return all(d.in_memory for d in decoded.values())


def role_outputs(t: Training, role: str, images: ImageSet, indices: list[int] | None = None):
    """outputs() of one of the run's image sets (or the images at `indices` of it): of its cached
    backbone features under --freeze-backbone, `role` naming them ("source", "target", ...)."""
    if t.features is not None:
        values = t.features[role].values
        return outputs(t.model, values[indices] if indices is not None else values, t)
    return outputs(t.model, images.subset(indices) if indices is not None else images, t, f"evaluating: {ROLE_NAMES[role]}")


def predicted_counts(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """How many rows are predicted as each class."""
    return torch.bincount(logits.argmax(1), minlength=classes).float()


MOSAIC_IMAGES = 16
MOSAIC_POOL = 4  # times MOSAIC_IMAGES: the images predicted to choose the mosaic's from
MOSAIC_LEAST_CONFIDENT = 4


@torch.no_grad()
def target_predictions(t: Training) -> list[tuple[Any, str, float]]:
    """(image, predicted class, probability) of MOSAIC_IMAGES target images, by the model as it is
    now (the shipped one, in eval mode): chosen from a seeded random pool of the validators' target
    sample by mosaic_choice, so that the mosaic shows every predicted class and the model's doubts,
    not 16 neighbouring frames of one camera."""
    sample = t.validation.target_sample or list(range(len(t.target)))
    pool = sample_indices(len(sample), MOSAIC_POOL * MOSAIC_IMAGES, t.cfg.seed, 5)
    indices = [sample[i] for i in pool]
    was_training = t.model.training
    t.model.eval()
    try:
        probabilities = role_outputs(t, "target", t.target, indices)[0].softmax(1)
    finally:
        t.model.train(was_training)
    confidence, predicted = probabilities.max(1)
    chosen = mosaic_choice(predicted.tolist(), confidence.tolist(), MOSAIC_IMAGES)
    return [(_thumbnail(t.target.paths[indices[j]]), t.source.classes[int(predicted[j])], float(confidence[j])) for j in chosen]


def mosaic_choice(predicted: list[int], confidence: list[float], n: int, least_confident: int = MOSAIC_LEAST_CONFIDENT) -> list[int]:
    """n positions of the pool: the `least_confident` predictions first, then the others stratified
    by predicted class (each class in turn, its images from the most confident down), so that a
    class the model predicts often cannot fill the mosaic alone."""
    order = sorted(range(len(predicted)), key=lambda j: (confidence[j], j))
    chosen = order[:min(least_confident, n)]
    by_class: dict[int, list[int]] = {}
    for j in sorted(order[len(chosen):], key=lambda j: (-confidence[j], j)):
        by_class.setdefault(predicted[j], []).append(j)
    queues = [by_class[c] for c in sorted(by_class, key=lambda c: (-len(by_class[c]), c))]
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def _thumbnail(path) -> Any:
    image = load_rgb(path)
    image.thumbnail((256, 256))  # a mosaic tile: a camera's full-size photo need not be held
    return image
