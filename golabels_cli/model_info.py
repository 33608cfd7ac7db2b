"""What a shipped model is, stored beside its weights: in model.safetensors and in model.onnx.

Torch-free, because `golabels predict model.onnx` reads it on onnxruntime alone.

ONNX metadata (`metadata_props`, every value a string) is flat so that plain Python can use it:

    golabels_format   "golabels-onnx/1"
    classes           JSON list of class names, in output order; a name that is not UTF-8 written with
                      \\xNN escapes, its bytes base64 in classes_base64 (null for the others)
    input_size        JSON [3, height, width]
    mean, std         JSON lists of 3 floats (applied after scaling pixels to [0, 1])
    interpolation     bilinear | bicubic | nearest | ...
    crop_pct          resize so that the crop covers this fraction, then center crop
    crop_mode         center | squash | border (timm's eval modes)
    backbone, method, domain_labels, golabels_version
    members           JSON list of recipes, one head each, of an ensemble (--method auto); absent for one head
    temperature       the number the logits were divided by (calibration.py), already in the graph; absent: 1
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .choices import MAX_MEMBERS
from .errors import InputError
from .formats import utf8_safe

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # images.py's resampling filters
CROP_MODES = ("center", "squash", "border")
MAX_INPUT_SIDE = 8192
# Images are resized to input size / crop_pct before the crop: timm's models use 0.75 to 1, and a
# tiny one would resize every image to gigabytes.
MIN_CROP_PCT = 0.25
# Normalization divides pixels in [0, 1] by std: every timm model's is 0.2 to 0.5, and one near
# zero turns the confidences into inf and NaN.
MIN_STD = 1e-3
MAX_MEAN = 10.0
# A shipped model's temperature (calibration.py searches it in this range; a file outside it is damaged).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
MODEL_FORMAT = "golabels-classifier/1"
ONNX_FORMAT = "golabels-onnx/1"


@dataclass
class ModelInfo:
    backbone: str
    classes: list[str]
    data_config: dict
    bottleneck_dim: int
    method: str
    domain_labels: str
    version: str = __version__
    members: list[str] | None = None  # an ensemble's recipes, one head each (--method auto); None: one head
    temperature: float = 1.0  # the logits are divided by it (calibration.py); models written before it: 1

    def check(self, path: Path) -> "ModelInfo":
        """Every field a loader trusts, checked: a damaged or edited file is refused naming the field,
        instead of labelling images with the wrong names or NaN confidences."""

        def bad(field: str, why: str) -> InputError:
            return InputError(f"{path} has a bad {field} in its golabels metadata ({why})", "re-export it from its run")

        def finite(values, n: int) -> bool:
            return (isinstance(values, list) and len(values) == n
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))

        if not isinstance(self.classes, list) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise bad("classes", "must be a non-empty list of names")
        if len(set(self.classes)) != len(self.classes):
            raise bad("classes", "names repeat")
        cfg = self.data_config
        if not isinstance(cfg, dict):
            raise bad("data_config", "must be a mapping")
        size = cfg.get("input_size")
        if not (isinstance(size, list) and len(size) == 3 and size[0] == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in size[1:])):
            raise bad("input_size", f"must be [3, height, width], each side 1 to {MAX_INPUT_SIDE}, got {size!r}"[:120])
        if not finite(cfg.get("mean"), 3):
            raise bad("mean", "must be 3 finite numbers")
        if not finite(cfg.get("std"), 3) or min(cfg["std"]) < MIN_STD or max(map(abs, cfg["mean"])) > MAX_MEAN:
            what = "std" if not finite(cfg.get("std"), 3) or min(cfg["std"]) < MIN_STD else "mean"
            raise bad(what, f"std must be 3 finite numbers of at least {MIN_STD:g} and mean within ±{MAX_MEAN:g}: "
                            "pixels divided by less would overflow the confidences")
        if cfg.get("interpolation", "bilinear") not in INTERPOLATIONS:
            raise bad("interpolation", f"{cfg.get('interpolation')!r} is not one of {', '.join(INTERPOLATIONS)}"[:120])
        if (cfg.get("crop_mode") or "center") not in CROP_MODES:
            raise bad("crop_mode", f"{cfg.get('crop_mode')!r} is not one of {', '.join(CROP_MODES)}"[:120])
        crop_pct = cfg.get("crop_pct")
        crop_pct = 0.875 if crop_pct is None else crop_pct  # absent: timm's default; present, even 0, it must be in range
        if not (isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and math.isfinite(crop_pct)
                and MIN_CROP_PCT <= crop_pct <= 1):
            raise bad("crop_pct", f"must be in [{MIN_CROP_PCT}, 1], got {crop_pct!r}")
        if not isinstance(self.bottleneck_dim, int) or self.bottleneck_dim < 0:
            raise bad("bottleneck_dim", f"must be a non-negative integer, got {self.bottleneck_dim!r}")
        if self.members is not None and not (isinstance(self.members, list) and 2 <= len(self.members) <= MAX_MEMBERS
                                             and all(isinstance(m, str) and m for m in self.members)):
            raise bad("members", f"must be a list of 2 to {MAX_MEMBERS} recipe names")
        if not (isinstance(self.temperature, float) and MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise bad("temperature", f"must be a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {self.temperature!r}"[:120])
        return self

    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata of model.safetensors."""
        return {
            "format": MODEL_FORMAT,
            "backbone": self.backbone,
            "classes": json.dumps(self.classes),
            "data_config": json.dumps(self.data_config),
            "bottleneck_dim": str(self.bottleneck_dim),
            "method": self.method,
            "domain_labels": self.domain_labels,
            "golabels_version": self.version,
            **({"members": json.dumps(self.members)} if self.members is not None else {}),
            **({"temperature": repr(self.temperature)} if self.temperature != 1.0 else {}),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "ModelInfo":
        if meta.get("format") != MODEL_FORMAT:
            raise InputError(f"{path} is not a golabels model (format {meta.get('format')!r})", "pass a run directory or its "
                                                                                                "model.safetensors")
        try:
            info = cls(
                backbone=meta["backbone"],
                classes=json.loads(meta["classes"]),
                data_config=json.loads(meta["data_config"]),
                bottleneck_dim=int(meta["bottleneck_dim"]),
                method=meta["method"],
                domain_labels=meta["domain_labels"],
                version=meta.get("golabels_version", "?"),
                members=json.loads(meta["members"]) if "members" in meta else None,
                temperature=float(meta.get("temperature", "1")),
            )
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path} has damaged golabels metadata ({exc})", "re-export it from its run") from exc
        return info.check(path)

    def onnx_metadata(self) -> dict[str, str]:
        """Everything needed to use model.onnx without its run directory."""
        cfg = self.data_config
        return {
            "golabels_format": ONNX_FORMAT,
            **_names_metadata("classes", self.classes),
            "input_size": json.dumps(cfg["input_size"]),
            "mean": json.dumps(cfg["mean"]),
            "std": json.dumps(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": repr(cfg["crop_pct"]),
            "crop_mode": cfg.get("crop_mode", "center"),
            "backbone": self.backbone,
            "method": self.method,
            "domain_labels": self.domain_labels,
            "bottleneck_dim": str(self.bottleneck_dim),
            "golabels_version": self.version,
            **({"members": json.dumps(self.members)} if self.members is not None else {}),
            **({"temperature": repr(self.temperature)} if self.temperature != 1.0 else {}),
        }

    @classmethod
    def from_onnx_metadata(cls, meta: dict[str, str], path: Path) -> "ModelInfo":
        if meta.get("golabels_format") != ONNX_FORMAT:
            found = f"format {meta['golabels_format']!r}" if "golabels_format" in meta else "no golabels metadata"
            raise InputError(f"{path} is not a golabels ONNX model ({found})", "export one with: golabels export RUN_DIR --onnx")
        try:
            data_config = {
                "input_size": [int(v) for v in json.loads(meta["input_size"])],
                "interpolation": meta["interpolation"],
                "mean": [float(v) for v in json.loads(meta["mean"])],
                "std": [float(v) for v in json.loads(meta["std"])],
                "crop_pct": float(meta["crop_pct"]),
                "crop_mode": meta.get("crop_mode", "center"),
            }
            info = cls(
                backbone=meta["backbone"],
                classes=_names_from_metadata(meta, "classes"),
                data_config=data_config,
                bottleneck_dim=int(meta.get("bottleneck_dim", "0")),
                method=meta["method"],
                domain_labels=meta["domain_labels"],
                version=meta.get("golabels_version", "?"),
                members=json.loads(meta["members"]) if "members" in meta else None,
                temperature=float(meta.get("temperature", "1")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path} has damaged golabels metadata ({exc})", "re-export it: golabels export RUN_DIR --onnx") from exc
        return info.check(path)


def _names_metadata(key: str, names: list[str]) -> dict[str, str]:
    """Names as ONNX metadata, valid UTF-8 for any reader: a name that is not (a class folder in
    Latin-1) is written with \\xNN escapes and its raw bytes base64 under KEY_base64, as every JSON
    output of golabels writes it (formats.py); JSON's \\udcNN escapes of lone surrogates, written
    before, are text no strict reader takes."""
    safe = utf8_safe({key: names})
    out = {key: json.dumps(safe[key])}
    if f"{key}_base64" in safe:
        out[f"{key}_base64"] = json.dumps(safe[f"{key}_base64"])
    return out


def _names_from_metadata(meta: dict[str, str], key: str) -> list[str]:
    """_names_metadata read back: each name as the file system gave it (its bytes where they were
    not UTF-8). Models exported before KEY_base64 carry the names themselves."""
    names = json.loads(meta[key])
    if f"{key}_base64" not in meta:
        return names
    raw = json.loads(meta[f"{key}_base64"])
    if not isinstance(names, list) or not isinstance(raw, list) or len(raw) != len(names):
        raise ValueError(f"{key}_base64 does not match {key}")
    return [name if encoded is None else base64.b64decode(encoded, validate=True).decode("utf-8", "surrogateescape")
            for name, encoded in zip(names, raw)]
