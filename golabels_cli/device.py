"""--device: which torch device a command runs on."""

from __future__ import annotations

import torch

from .choices import DEVICES
from .errors import InputError


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """auto: CUDA when present, then Apple MPS, else the CPU; a device asked for by name must be there."""
    if name not in DEVICES:
        raise InputError(f"unknown --device {name!r}", f"choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu or auto")
    if name == "mps" and not _mps_available():
        raise InputError("--device mps was asked for but Apple MPS is not available", "use --device cpu or auto")
    return torch.device(name)
