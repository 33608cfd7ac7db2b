"""The shipped classifier (model.safetensors) saved and loaded, and checkpoint.pt loaded safely
(weights only, never unpickled). Writing a file atomically is files.py's."""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from pathlib import Path

import torch

from .errors import InputError, reason
from .files import atomic_path
from .images import require_regular
from .model_info import ModelInfo
from . import run_files

log = logging.getLogger("golabels")



# ---- the shipped classifier -------------------------------------------------------------------


def save_model(model: torch.nn.Module, info: ModelInfo, path: str | Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(_sorted_header(save(state, metadata=info.metadata())))


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the header's keys in one order: its writer emits the metadata in
    hash-map order, which changes from process to process, so two identical runs' files would
    differ and a checksum could not show that a replay matched. The tensors' bytes and offsets
    are untouched; the header is padded with spaces to 8 bytes, as the format's writer does."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = header.pop("__metadata__", None)
    ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}),
               **dict(sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0])))}
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def model_path(run_or_model: str | Path) -> Path:
    """The model file of a run directory or a model file: model.safetensors, or the checkpoint.pt
    of a run that stopped before its end (load_model takes its weights)."""
    path = Path(run_or_model)
    if path.is_dir():
        path = path / run_files.MODEL
        if not os.path.lexists(path) and os.path.lexists(path.parent / run_files.CHECKPOINT):
            return path.parent / run_files.CHECKPOINT
        if not os.path.lexists(path):
            raise InputError(f"{run_or_model} holds no {run_files.MODEL}", "pass a finished run directory or a model file")
    elif not os.path.lexists(path):
        raise InputError(f"{run_or_model} does not exist", "pass a run directory or a model.safetensors file")
    require_regular(path, "model", "pass a run directory or a model.safetensors file")  # a FIFO would block for ever
    if path.suffix.lower() == ".onnx":
        raise InputError(f"{path} is an ONNX model, which golabels predict runs; this command reads the PyTorch model",
                         f"pass its run directory or its {run_files.MODEL}")
    return path


def load_model(run_or_model: str | Path, calibrated: bool = True):
    """(Classifier, or HeadEnsemble, in eval mode, ModelInfo) from a run directory or a model.safetensors
    file; its logits divided by the model's temperature unless not `calibrated` (a teacher's labels
    are read as it was trained)."""
    from safetensors import safe_open

    from .methods import get_recipe
    from .models import Classifier, HeadEnsemble, create_backbone

    path = model_path(run_or_model)
    if path.name == run_files.CHECKPOINT:
        return checkpoint_model(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise InputError(f"cannot read model {path} ({reason(exc)})", "the file is damaged; re-run or re-export") from exc
    info = ModelInfo.from_metadata(meta, path)

    def head(method: str, prefix: str = "") -> Classifier:
        try:
            bridged = get_recipe(method).alignment.bridged_head
        except ValueError:  # a method of a newer golabels: its head is told by the weights
            bridged = f"{prefix}head.bridge.weight" in state
        return Classifier(backbone, len(info.classes), info.bottleneck_dim, bridged=bridged)

    backbone = create_backbone(info.backbone, pretrained=False)
    if info.members is None:
        model = head(info.method)
    else:
        model = HeadEnsemble(backbone, [head(m, f"members.{i}.") for i, m in enumerate(info.members)])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"model {path} does not match its own metadata ({reason(exc)})", "the file is damaged") from exc
    if calibrated:
        model.temperature = info.temperature
    return model.eval(), info


def checkpoint_model(path: Path):
    """(Classifier in eval mode, ModelInfo) of the weights in a stopped run's checkpoint.pt, as they
    were at its last save (with training's BatchNorm statistics: --bn-stats target re-estimates
    them only when the run finishes). Says which iteration it is."""
    from .methods import get_recipe
    from .models import Classifier, create_backbone, resolve_data_config

    ckpt = load_checkpoint(path)
    try:
        cfg, classes, done = ckpt["config"], list(ckpt["classes"]), int(ckpt["loop"]["iteration"])
        backbone = create_backbone(cfg["backbone"], pretrained=False)
        info = ModelInfo(cfg["backbone"], classes, resolve_data_config(backbone, cfg.get("image_size")), cfg["bottleneck_dim"],
                         cfg["method"], cfg["domain_labels"]).check(path)
        model = Classifier(backbone, len(classes), info.bottleneck_dim, bridged=get_recipe(info.method).alignment.bridged_head)
        model.load_state_dict(ckpt["model"], strict=True)
    except InputError:
        raise
    except Exception as exc:  # a key missing, a shape that does not fit: unusable alike
        raise InputError(f"{path} is not a checkpoint golabels can take a model from ({reason(exc)})", "pass a finished run") from exc
    bn = ""
    if cfg.get("bn_stats") == "target":
        bn = " (with training's BatchNorm statistics: --bn-stats target re-estimates them at the end)"
    log.warning("%s holds no %s: the run stopped at iteration %d of %d; using the weights of iteration %d from %s%s",
                path.parent, run_files.MODEL, done, cfg["iters"], done, run_files.CHECKPOINT, bn)
    return model.eval(), info


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded without unpickling arbitrary objects."""
    require_regular(path, "checkpoint", "pass the run directory of a golabels adapt run")
    try:
        with warnings.catch_warnings():  # torch's advice on unpickling is not for golabels' users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"checkpoint {path} holds pickled Python objects, which golabels never unpickles: it could run any code",
                         "it is not a golabels checkpoint; start the run again") from exc
    except Exception as exc:
        raise InputError(f"cannot load checkpoint {path} ({reason(exc)})", "it is damaged or not a golabels checkpoint") from exc
