"""How a run uses the machine: random generators, speed settings, and the environment a result is
comparable only beside."""

from __future__ import annotations

import importlib.metadata
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import AdaptConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a step may use, in types torch.load(weights_only=True) accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


@dataclass(frozen=True)
class Speed:
    """How a run uses the hardware. On CUDA everything that makes it faster; elsewhere nothing,
    so CPU results stay bit-exact and reproducible."""

    autocast: torch.dtype | None = None  # mixed precision (--precision); None: fp32
    loss_scaling: bool = False  # fp16: gradients scaled so that small ones do not underflow
    channels_last: bool = False
    fused_optimizer: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def speed_settings(device: torch.device, cfg: AdaptConfig) -> Speed:
    cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    return Speed(
        autocast=PRECISION_DTYPES[precision],
        loss_scaling=precision == "fp16",
        channels_last=cuda and not cfg.freeze_backbone,
        fused_optimizer=cuda,
        pin_memory=cuda,
        cudnn_benchmark=cuda and not cfg.deterministic,
        compile=cfg.compile,
    )


def environment(device: torch.device) -> dict[str, str | None]:
    """What decides the numbers besides the config: the libraries' versions and the hardware.
    The same config and seed gave other figures in a fresh install on another machine (one DANN
    run on MNIST → USPS: 60.94 % then 83.42 %), so a result is comparable only with these beside it."""
    env: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "pillow"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    env["cpu"] = _cpu_model()
    env["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()  # which vectorized kernels torch dispatches to
    env["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return env


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
