"""Image files and the eval preprocessing, with PIL and numpy only.

This module must not import torch: `golabels predict model.onnx` runs on onnxruntime alone, and
it decodes and preprocesses images with exactly the code that `eval`, `export` verification and
the PyTorch predict path use, so every path sees the same pixels.

The preprocessing reproduces timm's eval transform (`timm.data.create_transform(is_training=False)`)
on PIL images: resize by `crop_pct` (center, squash or border mode), center crop, scale to [0, 1],
normalize with the data config's mean and std. A test compares it with timm's transform.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError, reason

log = logging.getLogger("golabels")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# A JPEG whose shorter side is at least DRAFT_ABOVE pixels is decoded at a reduced scale (libjpeg's
# DCT scaling), keeping the shorter side >= DRAFT_SIDE: a 10000 x 10000 photo costs 19 MB, not 300.
# Smaller images decode in full, so their pixels are exactly what timm's own pipeline sees.
DRAFT_ABOVE, DRAFT_SIDE = 4096, 2048

# Resizing scales the shorter side to the model's input size: a 2,000,000 x 1 image (2 KB on disk)
# would become hundreds of millions of pixels. Images more elongated than this are skipped.
MAX_ASPECT_RATIO = 100


def shape_problem(size: tuple[int, int]) -> str | None:
    """Why an image of `size` (width, height) is not taken, before any pixel is decoded; else None."""
    width, height = size
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return f"{width}x{height} px: an aspect ratio beyond {MAX_ASPECT_RATIO}:1, which resizing would blow up"
    return None


# Sizes are handled above; PIL still refuses real decompression bombs (DecompressionBombError).
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


# Scans shared by the runs of one process that read the same folders (the candidates of
# --method auto): each folder is listed and its images checked, and warned about, once.
_shared_scans: contextvars.ContextVar[dict | None] = contextvars.ContextVar("golabels_shared_scans", default=None)


@contextlib.contextmanager
def shared_scans() -> Iterator[None]:
    token = _shared_scans.set({})
    try:
        yield
    finally:
        _shared_scans.reset(token)


def first_time(key: object) -> bool:
    """False when `key` was seen before inside the same shared_scans() (the candidates of one
    search say a warning about the folders once), else True, and it is seen from now on."""
    memo = _shared_scans.get()
    if memo is None:
        return True
    if ("said", key) in memo:
        return False
    memo[("said", key)] = True
    return True


def once_per_folder(scan):
    """The scan's result kept for the same folder and role inside shared_scans()."""

    @functools.wraps(scan)
    def wrapper(root: str | Path, role: str = scan.__defaults__[0]):
        memo = _shared_scans.get()
        if memo is None:
            return scan(root, role)
        key = (scan.__name__, os.path.abspath(root), role)
        if key not in memo:
            memo[key] = scan(root, role)
        return memo[key]

    return wrapper


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class Scan:
    """What one scan of a folder tree has read, so that it reads each folder once and, where it
    keeps `files`, counts each image file once by its resolved path. `owners`: the class folders of
    a labeled scan ({identity: folder}), whose images are never another class's."""

    folders: dict[tuple[int, int], Path] = field(default_factory=dict)
    files: dict[str, Path] | None = None
    owners: dict[tuple[int, int], Path] = field(default_factory=dict)

    @classmethod
    def once_per_file(cls, owners: dict[tuple[int, int], Path] | None = None) -> "Scan":
        return cls(files={}, owners=owners or {})


def folder_identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def image_files(folder: str | Path, problems: list[tuple[Path, str]] | None = None, scan: Scan | None = None) -> list[Path]:
    """Every image below `folder` (hidden files and folders skipped), in walk order.

    Symbolic links are followed and each folder is read once: a link loop, a link to a folder
    that holds `folder`, a second link to a folder already read, and (with `scan.owners`) a link
    into another class's folder are skipped and reported in `problems`, as is a folder that can't
    be listed; so is (with `scan.owners`) a link to an image that really lives in another class's
    folder: it counts in its own class, whatever the names sort. With `scan.files`, an image
    reached again under another name is reported, not returned: the first name that reaches it
    keeps it.
    """
    found: list[Path] = []
    scan = scan if scan is not None else Scan()
    home = os.path.realpath(folder)
    owner = scan.owners.get(folder_identity(folder)) if scan.owners else None

    def report(path: Path, why: str) -> None:
        if problems is not None:
            problems.append((path, why))

    def unreadable(err: OSError) -> None:
        report(Path(err.filename or folder), reason(err))

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable):
        try:
            key = folder_identity(dirpath)
        except OSError as err:
            unreadable(err)
            dirnames[:] = []
            continue
        real = os.path.realpath(dirpath)
        why = None
        if key in scan.folders:
            why = f"a link to {scan.folders[key]}, already read: each folder is read once"
        elif key in scan.owners and scan.owners[key] != owner:
            why = f"a link to class folder {scan.owners[key].name}: its images are that class's"
        elif real != home and os.path.commonpath([real, home]) == real:
            why = f"a link to {real}, which holds {folder}: a loop"
        if why is not None:
            report(Path(dirpath), why)
            dirnames[:] = []
            continue
        scan.folders[key] = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not is_image_name(name):
                continue
            path = Path(dirpath) / name
            why = not_regular(path)
            if why is None and scan.owners and path.is_symlink():
                real_owner = _class_of(os.path.realpath(path), scan.owners)
                if real_owner is not None and real_owner != owner:
                    why = f"a link to an image of class folder {real_owner.name}: it counts there, by where it really is"
            if why is None and scan.files is not None:
                resolved = os.path.realpath(path)
                first = scan.files.setdefault(resolved, path)
                if first != path:
                    why = f"another name of {first}, already read: each image counts once"
            if why is None:
                found.append(path)
            else:
                report(path, why)
    return found


def _class_of(real_path: str, owners: dict[tuple[int, int], Path]) -> Path | None:
    """The class folder (of `owners`) that really holds the file at `real_path`, if any does."""
    for parent in Path(real_path).parents:
        try:
            found = owners.get(folder_identity(parent))
        except OSError:
            return None
        if found is not None:
            return found
    return None


def not_regular(path: str | Path) -> str | None:
    """None for a regular file (after links), else what it is: opening a FIFO or a device would
    block or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file (a broken link?)"
    except OSError as exc:
        return reason(exc)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    return f"{kind}, not a regular file"


def require_regular(path: str | Path, what: str, hint: str) -> None:
    """InputError unless `path` is a regular file (after links): `what` names it in the message."""
    why = not_regular(path)
    if why is not None:
        raise InputError(f"{what} {path} {'not found' if why.startswith('no such file') else 'is ' + why}", hint)


def _open_regular(path: str | Path) -> Image.Image:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return Image.open(path)  # raises the real error (no such file, permission denied)
    if not stat.S_ISREG(mode):
        raise NotRegularFile(not_regular(path))
    return Image.open(path)


class NotRegularFile(OSError):
    """Refused before opening: a FIFO, a socket, a device or a folder."""


def check_image(path: str | Path) -> str | None:
    """None if the image decodes completely, else why not."""
    return inspect_image(path)[0]


def inspect_image(path: str | Path) -> tuple[str | None, tuple[int, int] | None]:
    """(None, (width, height)) if the image decodes completely, else (why not, None). Decoding
    (not just parsing the header) is what finds truncated files; JPEGs decode at 1/8 scale here,
    which still reads every byte. The size is the stored one, before EXIF rotation."""
    try:
        why = not_regular(path)
        if why is not None:
            return why, None
        if os.stat(path).st_size == 0:
            return "empty file", None
        with Image.open(path) as img:
            size = img.size
            if shape_problem(size):
                return shape_problem(size), None
            if img.format == "JPEG":
                img.draft(img.mode, (1, 1))
            img.load()
    except FileNotFoundError:
        return "no such file (a broken link?)", None
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return reason(exc), None
    return None, size


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode any supported image to RGB: EXIF orientation applied, alpha composited on white.

    JPEGs are decoded at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4, 1/8) when that keeps
    the shorter side >= `min_side`, several times faster on large photos; without `min_side`,
    only huge ones are (DRAFT_ABOVE), so eval sees the same pixels as timm's own pipeline.
    """
    with _open_regular(path) as img:
        if shape_problem(img.size):
            raise ValueError(shape_problem(img.size))
        if img.format == "JPEG":
            side = min_side if min_side is not None else (DRAFT_SIDE if min(img.size) >= DRAFT_ABOVE else None)
            if side is not None and side < min(img.size):
                scale = side / min(img.size)
                img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255.
            img = img.point(lambda v: v * (255.0 / 65535.0)).convert("L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def resize_shorter(img: Image.Image, side: int, interpolation: str = "bilinear") -> Image.Image:
    """The shorter side to `side`, the longer in proportion (torchvision's Resize(int) on PIL)."""
    w, h = img.size
    size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    return img if size == img.size else img.resize(size, _RESAMPLE[interpolation])


def scale_size(data_config: dict) -> int:
    """The shorter side before the crop: floor(input size / crop_pct), 256 for 224 at 0.875."""
    return math.floor(min(data_config["input_size"][1:]) / (data_config.get("crop_pct") or 0.875))


def _center_crop_or_pad(img: Image.Image, height: int, width: int, fill: tuple[int, ...]) -> Image.Image:
    if width > img.width or height > img.height:
        left = (width - img.width) // 2 if width > img.width else 0
        top = (height - img.height) // 2 if height > img.height else 0
        padded = Image.new(img.mode, (max(width, img.width), max(height, img.height)), fill)
        padded.paste(img, (left, top))
        img = padded
    top = int(round((img.height - height) / 2.0))
    left = int(round((img.width - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def resize_and_crop(img: Image.Image, data_config: dict) -> Image.Image:
    """timm's eval geometry: scale so the crop covers `crop_pct` of the image, then center crop."""
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 0.875
    mode = data_config.get("crop_mode") or "center"
    resample = _RESAMPLE[data_config.get("interpolation", "bilinear")]
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    if mode == "squash":
        size, fill = (scale_w, scale_h), (0, 0, 0)
    elif mode == "border":
        ratio = max(img.height / scale_h, img.width / scale_w)
        size = (round(img.width / ratio), round(img.height / ratio))
        fill = tuple(round(255 * v) for v in data_config["mean"])
    elif scale_h == scale_w:
        return _center_crop_or_pad(resize_shorter(img, scale_h, data_config.get("interpolation", "bilinear")), height, width, (0, 0, 0))
    else:
        ratio = min(img.height / scale_h, img.width / scale_w)
        size = (round(img.width / ratio), round(img.height / ratio))
        fill = (0, 0, 0)
    if size != img.size:
        img = img.resize(size, resample)
    return _center_crop_or_pad(img, height, width, fill)


def to_array(img: Image.Image, data_config: dict) -> np.ndarray:
    """The model's input for one image: float32 CHW, resized, cropped and normalized."""
    x = np.asarray(resize_and_crop(img, data_config), dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(data_config["mean"], dtype=np.float32)
    std = np.asarray(data_config["std"], dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def load_array(path: str | Path, data_config: dict) -> np.ndarray:
    return to_array(load_rgb(path), data_config)
