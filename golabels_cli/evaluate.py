"""`golabels eval`: a shipped model's accuracy on a labeled folder, matching classes by folder
name (the forward pass and the scoring are inference.py's, which training uses too)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError, RunError, reason
from .formats import csv_line
from .inference import EvalResult, cached_outputs, calibration_record, image_logits, labeled_for_model, model_labels, score


def evaluate(run_or_model: str | Path, data_dir: str | Path, device: str = "auto", batch_size: int = 64, workers: int = 0) -> EvalResult:
    images, to_model, info, logits = _logits(run_or_model, data_dir, device, batch_size, workers)
    result = score(images, to_model, info.classes, logits.argmax(1))
    result.calibration = calibration_record(logits, logits.argmax(1) == model_labels(images, to_model), info.temperature)
    return result


def predictions(run_or_model: str | Path, data_dir: str | Path, device: str = "auto", batch_size: int = 64,
                workers: int = 0) -> tuple[list[str], list[bool]]:
    """Each image of a labeled folder (its path) and whether the model gets it right: what
    `golabels compare` pairs between runs."""
    images, to_model, _, logits = _logits(run_or_model, data_dir, device, batch_size, workers)
    truth = [to_model[label] for label in images.labels]
    return [str(p) for p in images.paths], [int(p) == t for p, t in zip(logits.argmax(1).tolist(), truth)]


def _logits(run_or_model: str | Path, data_dir: str | Path, device: str, batch_size: int, workers: int):
    """(the folder's images, their classes in the model's order, the model's ModelInfo, its logits of each image)."""
    from .checkpoint import load_model
    from .device import pick_device

    model, info = load_model(run_or_model)
    images, to_model = labeled_for_model(data_dir, info.classes)
    dev = pick_device(device)
    model = model.to(dev)
    cache = _frozen_backbone_cache(run_or_model)
    if cache is None:
        logits = image_logits(model, images, info.data_config, dev, batch_size, workers)
    else:
        logits, _ = cached_outputs(model, info, images, dev, cache, batch_size, workers, "eval: features")
    return images, to_model, info, logits


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


def check_new_file(path: str | Path, option: str) -> None:
    """Before any work: `path` is free, in a folder this user can write to (nothing is overwritten)."""
    folder = Path(path).parent
    if Path(path).exists():
        raise InputError(f"{path} already exists", f"choose another {option} file or remove it")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: {folder} is not a folder you can write to", "create it, or pass a path in one")


def write_confusion_csv(result: EvalResult, path: str | Path) -> None:
    """The confusion matrix as CSV at `path`, atomically, never over a file another process made meanwhile."""
    from .files import remove_stale_temporaries, write_text_atomic

    remove_stale_temporaries(Path(path).parent, Path(path).name)
    try:
        write_text_atomic(path, confusion_csv(result), replace=False)
    except FileExistsError:
        raise InputError(f"{path} was created by another process during the evaluation; it is left as it is",
                         "choose another --confusion file") from None
    except OSError as exc:
        raise RunError(f"cannot write {path} ({reason(exc)})", "check the folder's permissions and free space") from exc


def write_confusion_plots(result: EvalResult, run_or_model: str | Path, data_dir: str | Path) -> list[Path] | None:
    """`eval --plots`: the two confusion-matrix PNGs beside the model (run_files.confusion_figures);
    None without matplotlib."""
    from .checkpoint import model_path
    from .figures import write_confusion_figures

    folder = model_path(run_or_model).parent
    try:
        return write_confusion_figures(result, folder, data_dir, f"{run_or_model} on {data_dir}")
    except OSError as exc:
        raise RunError(f"cannot write the confusion matrices into {folder} ({reason(exc)})", "check the folder's permissions") from exc


def confusion_csv(result: EvalResult) -> str:
    lines = [csv_line(["true\\predicted", *result.predicted_classes])]
    for name, row in zip(result.true_classes, result.confusion):
        lines.append(csv_line([name, *map(str, row)]))
    return "".join(lines)
