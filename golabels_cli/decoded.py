"""Training images decoded once: uint8 at the scale size, in memory when they fit, else on disk.

Each image is decoded as evaluation decodes it (images.load_rgb) and its shorter side resized to
the scale size (256 for 224 px at crop_pct 0.875) with the data config's interpolation: exactly
timm's eval geometry before its center crop. The batched augmentation (device_batches.py) crops
training batches from these arrays, and a center crop of one is the eval transform's input.

Kept in memory when they take under half the free memory; otherwise written once to a disk cache
beside the feature cache and read back one draw at a time:

    cache:  CACHE/decoded/<config key>/<image key[:2]>/<image key>.npy    (uint8, height x width x 3)
    config key = sha256(FORMAT, scale size, interpolation)
    image key  = features.image_key (sha256 of the file's bytes): a changed file is decoded again

Entries are read as untrusted input (a uint8 array of the expected shape that ends with its own
image key, else decoded again) and written atomically, so parallel runs share the cache safely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .files import remove_stale_temporaries
from .data import ImageSet, free_memory
from .errors import InputError
from .features import cache_root, entry_file, image_keys, read_npy, save_entry
from .images import MAX_ASPECT_RATIO, load_rgb, resize_shorter, scale_size
from .progress import tracked

log = logging.getLogger("golabels")

FORMAT = "golabels-decoded/2"  # 2: keys of content, entries that name their key
MEMORY_FRACTION = 0.5  # of the free memory, shared by the processes of this machine


def decode_to_scale(path: str | Path, data_config: dict) -> np.ndarray:
    """One image as uint8 HWC: eval's decoding, shorter side at the scale size."""
    image = resize_shorter(load_rgb(path), scale_size(data_config), data_config.get("interpolation", "bilinear"))
    return np.array(image, dtype=np.uint8)  # writable: crops are wrapped as tensors without a copy


class DecodedImages:
    """The decoded images of an ImageSet, in its order: `images[i]` is a uint8 HWC array."""

    def __init__(self, arrays: list[np.ndarray] | None = None, files: list[Path] | None = None, side: int = 0):
        self.arrays, self.files, self.side = arrays, files, side

    def __len__(self) -> int:
        return len(self.arrays if self.arrays is not None else self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays[i]
        array, why = read_entry(self.files[i], self.side)
        if array is None:  # changed under a running run: nothing sensible to train on
            raise InputError(f"decoded-image cache entry {self.files[i]} is {why or 'gone'}", "do not edit the cache during a run")
        return array

    @property
    def in_memory(self) -> bool:
        return self.arrays is not None


def decode_images(images: ImageSet, data_config: dict, cache_dir: str | None, what: str, workers: int = 8) -> DecodedImages:
    """Every image of `images` decoded once (decode_to_scale): in memory when they fit in
    MEMORY_FRACTION of the free memory, else through the disk cache."""
    side = scale_size(data_config)
    need = sum(3 * side * _longer_side(size, side) for size in images.sizes) if images.sizes else 0
    free = free_memory()
    share = MEMORY_FRACTION / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each local process keeps its own copy
    threads = max(1, min(workers, os.cpu_count() or 1))
    if free is None or need <= share * free:
        # Decoding releases the GIL: threads decode several images at once.
        with ThreadPoolExecutor(threads) as pool:
            arrays = list(tracked(pool.map(lambda p: decode_to_scale(p, data_config), images.paths), what, len(images)))
        log.info("%s: %d images decoded into %.2f GB of memory", what, len(arrays), sum(a.nbytes for a in arrays) / 1e9)
        return DecodedImages(arrays=arrays)
    folder = cache_root(cache_dir) / "decoded" / config_key(data_config)
    log.info("%s: the %d images take %.1f GB, more than %.0f%% of the %.1f GB free: decoded once into %s", what, len(images),
             need / 1e9, 100 * share, free / 1e9, folder)
    files = [entry_file(folder, k) for k in image_keys(images.paths)]
    for shard in {f.parent for f in files}:
        if shard.is_dir():
            remove_stale_temporaries(shard)  # the entry a killed run was writing

    def ensure(i: int) -> str | None:
        """Why the entry was damaged (it is decoded again), or None."""
        array, why = read_entry(files[i], side)
        if array is None:
            _save_entry(files[i], decode_to_scale(images.paths[i], data_config))
        return why

    with ThreadPoolExecutor(threads) as pool:
        damaged = [(f, why) for f, why in zip(files, tracked(pool.map(ensure, range(len(files))), what, len(files))) if why]
    if damaged:
        path, why = damaged[0]
        log.warning("decoded-image cache: %d entr%s damaged (%s: %s%s); decoded again", len(damaged), "y" if len(damaged) == 1 else "ies",
                    path, why, ", ..." if len(damaged) > 1 else "")
    return DecodedImages(files=files, side=side)


def config_key(data_config: dict) -> str:
    return hashlib.sha256(json.dumps([FORMAT, scale_size(data_config),
                                      data_config.get("interpolation", "bilinear")]).encode()).hexdigest()[:32]


def _longer_side(size: tuple[int, int], side: int) -> int:
    w, h = size
    return max(side, int(side * max(w, h) / max(1, min(w, h))))


def read_entry(path: Path, side: int) -> tuple[np.ndarray | None, str | None]:
    """A cached image, read as untrusted input (features.read_npy): (array, None); (None, None)
    when absent; (None, why) when it is not a uint8 array of shape (h, w, 3) whose shorter side is `side`."""

    def image(shape, fortran, dtype) -> str | None:
        if (dtype != np.dtype("u1") or fortran or len(shape) != 3 or shape[2] != 3 or min(shape[:2]) != side
                or max(shape[:2]) > side * MAX_ASPECT_RATIO):
            return f"a {dtype} array of shape {shape}, not an image of shorter side {side}"
        return None

    return read_npy(path, image)


def _save_entry(path: Path, array: np.ndarray) -> None:
    save_entry(path, np.ascontiguousarray(array, dtype=np.uint8), "decoded-image")
