"""A classifier's forward pass over a loader and its scoring on a labeled folder: what evaluation
needs, below both the training loop (its evaluations, its target predictions) and `golabels eval`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .data import ImageSet, eval_loader, eval_transform, scan_labeled
from .errors import InputError
from .progress import batch_size as batch_size_of
from .progress import tracked


@dataclass
class ClassResult:
    name: str
    images: int
    correct: int
    accuracy: float


@dataclass
class ConfusedPair:
    true: str
    predicted: str
    images: int
    share: float  # of the true class's images


@dataclass
class EvalResult:
    images: int
    accuracy: float  # top-1 over all images
    mean_class_accuracy: float  # mean of per-class accuracies over the classes present
    per_class: list[ClassResult]
    confusion: list[list[int]]  # rows: the folder's classes (true), columns: the model's classes (predicted)
    true_classes: list[str]
    predicted_classes: list[str]
    skipped: int
    most_confused: list[ConfusedPair] = field(default_factory=list)  # the largest off-diagonal cells, largest first
    # How far its confidences are from its accuracy (calibration.py): the model's temperature, the
    # expected calibration error of its confidences, and that of its logits undivided (temperature 1).
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def labeled_for_model(data_dir: str | Path, model_classes: list[str], role: str = "evaluation") -> tuple[ImageSet, list[int]]:
    """Scan a labeled folder and map each of its classes to the model's class index, by name."""
    images = scan_labeled(data_dir, role)
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in images.classes if c not in index]
    if unknown:
        raise InputError(
            f"class {unknown[0]!r} in {data_dir} is not one the model knows"
            + (f" (nor {', '.join(map(repr, unknown[1:4]))})" if len(unknown) > 1 else ""),
            f"the model's classes are: {', '.join(model_classes[:10])}{' …' if len(model_classes) > 10 else ''}",
        )
    return images, [index[c] for c in images.classes]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in `dtype` on `device`, or nothing when dtype is None (fp32)."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, loader, device: torch.device, channels_last: bool = False,
                    autocast_dtype: torch.dtype | None = None, what: str = "predicting", prepare=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, bottleneck features) of every batch of `loader`, in eval mode, as float32 on the
    CPU; `what` names the step in the progress shown meanwhile; `prepare`, applied to each batch
    on the device (a loader of uint8 images normalized there)."""
    was_training = model.training
    model.eval()
    logits, features = [], []
    for x, _ in tracked(loader, what, len(loader.dataset), batch_size_of):
        x = x.to(device, non_blocking=True)
        if prepare is not None:
            x = prepare(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, autocast_dtype):
            out = model(x)
        logits.append(out[0].float().cpu())
        features.append(out[1].float().cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(features)


def image_logits(model: torch.nn.Module, images: ImageSet, data_config: dict, device: torch.device, batch_size: int = 64,
                 workers: int = 0) -> torch.Tensor:
    """The model's logits of each image (eval transform, eval mode), on the CPU, in the ImageSet's order."""
    loader = eval_loader(images, eval_transform(data_config), batch_size, workers, pin=device.type == "cuda")
    return predict_outputs(model, loader, device, what="eval")[0]


def evaluate_cached(model: torch.nn.Module, info, images: ImageSet, to_model: list[int], device: torch.device, cache_dir: str,
                    batch_size: int = 64, workers: int = 0) -> EvalResult:
    """A model's scores on a labeled folder when its backbone never trained (--freeze-backbone): its cached
    features are the backbone's output (eval mode, eval transform), and only images not seen
    before go through it."""
    logits, _ = cached_outputs(model, info, images, device, cache_dir, batch_size, workers, "eval: features")
    return score(images, to_model, info.classes, logits.argmax(1))


def cached_outputs(model: torch.nn.Module, info, images: ImageSet, device: torch.device, cache_dir: str | None, batch_size: int = 64,
                   workers: int = 0, what: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the model's features after its backbone) of `images` on the CPU, in eval mode, the
    backbone's output read from the feature cache (computed for the images not seen before)."""
    from .features import backbone_features, model_key

    key = model_key(info.backbone, model.backbone, info.data_config)
    features = backbone_features(images, model.backbone, key, info.data_config, device, cache_dir, batch_size, workers, what)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = [model.classify(chunk.to(device)) for chunk in features.values.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat([o[0].float().cpu() for o in outputs]), torch.cat([o[1].float().cpu() for o in outputs])


def model_labels(images: ImageSet, to_model: list[int]) -> torch.Tensor:
    """Each labeled image's class as the model's index (its folder's class mapped by `to_model`)."""
    return torch.tensor(to_model)[torch.tensor(images.labels)]


def score(images: ImageSet, to_model: list[int], model_classes: list[str], predicted: torch.Tensor) -> EvalResult:
    """Accuracy, per-class accuracy and confusion of the predicted model classes of `images`."""
    true_local = torch.tensor(images.labels)
    true_model = model_labels(images, to_model)
    confusion = torch.zeros(len(images.classes), len(model_classes), dtype=torch.long)
    confusion.index_put_((true_local, predicted), torch.ones_like(predicted), accumulate=True)
    per_class = []
    for c, name in enumerate(images.classes):
        n = int(confusion[c].sum())
        correct = int(confusion[c, to_model[c]])
        per_class.append(ClassResult(name, n, correct, correct / n if n else 0.0))
    correct_total = int((predicted == true_model).sum())
    return EvalResult(
        images=len(images),
        accuracy=correct_total / len(images),
        mean_class_accuracy=sum(r.accuracy for r in per_class) / len(per_class),
        per_class=per_class,
        confusion=confusion.tolist(),
        true_classes=list(images.classes),
        predicted_classes=list(model_classes),
        skipped=len(images.skipped),
        most_confused=most_confused(confusion, list(images.classes), list(model_classes)),
    )


MOST_CONFUSED = 5


def calibration_record(logits: torch.Tensor, correct: torch.Tensor, temperature: float) -> dict:
    """The calibration figures of EvalResult and summary.json from a model's (divided) `logits`."""
    from .calibration import expected_calibration_error

    return {"temperature": temperature, "ece": round(expected_calibration_error(logits.float().softmax(1), correct), 4),
            "ece_at_temperature_1": round(expected_calibration_error((logits.float() * temperature).softmax(1), correct), 4)}


def most_confused(confusion: torch.Tensor, true_classes: list[str], predicted_classes: list[str],
                  n: int = MOST_CONFUSED) -> list[ConfusedPair]:
    """The n largest cells of the confusion outside its diagonal (a true class predicted as another
    class), largest first, ties by name; cells of no image are left out."""
    cells = [(int(confusion[t, p]), true, predicted) for t, true in enumerate(true_classes) for p, predicted in enumerate(predicted_classes)
             if predicted != true and confusion[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    totals = confusion.sum(1).tolist()
    return [ConfusedPair(true, predicted, count, round(count / totals[true_classes.index(true)], 6))
            for count, true, predicted in cells[:n]]
