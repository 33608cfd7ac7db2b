"""--freeze-backbone: backbone features computed once, kept on disk, reused by every later run.

With the backbone fixed, a training step needs only its output for each image, so each image
goes through the backbone once (eval transform, eval mode) and only the bottleneck, head and
discriminator train, on those features: minutes instead of hours on a CPU. No augmentation
reaches the features; that is the price.

    cache:  CACHE/features/<model key>/<image key[:2]>/<image key>.npy    (float32 vector)
    model key  = sha256(backbone name, its weights, the eval data config, FORMAT)
    image key  = sha256 of the image file's bytes — a changed file gets a new key and is recomputed,
                 whatever its name, size and times say; copies and links of one file share it

Each entry ends with its own image key (after the .npy data, where numpy's readers stop), and an
entry whose key is not its name's (two entries swapped, one copied over another) is computed again.

CACHE is --cache-dir, else $GOLABELS_CACHE, else ~/.cache/golabels. Entries are written to a
temporary file and renamed, so parallel runs share a cache safely; stale entries are never read
(delete the folder to reclaim the space).
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_path, remove_stale_temporaries
from .config import default_cache_dir
from .data import ImageSet, eval_loader, eval_transform
from .errors import InputError, reason
from .progress import batch_size as batch_size_of
from .progress import tracked

log = logging.getLogger("golabels")

FORMAT = "golabels-features/2"  # 2: keys of content, entries that name their key


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def model_key(backbone_name: str, backbone: nn.Module, data_config: dict) -> str:
    h = hashlib.sha256(json.dumps([FORMAT, backbone_name, data_config], sort_keys=True).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


_KEYS: dict[tuple[int, ...], str] = {}  # a file's identity in this process -> its image key


def image_key(path: Path) -> str:
    """sha256 of the file's bytes. A key of the file's identity alone (device, inode, size, mtime)
    reused stale features for files replaced under the same names, sizes and mtimes (a tar
    extracted with fixed mtimes, an in-place rewrite, a reused inode). Within one process a file
    is read once: any write changes its ctime, which users cannot set, so an unchanged identity
    with its ctime is an unchanged file."""
    st = os.stat(path)  # follows symlinks: the file's own identity, not the name it was reached by
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key = _KEYS.get(identity)
    if key is None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        key = _KEYS[identity] = digest.hexdigest()
    return key


def image_keys(paths: list[Path]) -> list[str]:
    """image_key of each path, several files at once (reading and hashing release the GIL)."""
    if len(paths) < 64:
        return [image_key(p) for p in paths]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(image_key, paths, chunksize=32))


def entry_file(folder: Path, key: str) -> Path:
    """Where a cache (features/, decoded/) keeps the entry of the image whose key is `key`."""
    return folder / key[:2] / f"{key}.npy"


def key_trailer(path: Path) -> bytes:
    """What ends the entry at `path`: the image key its name says."""
    return b"\ngolabels-image " + path.stem.encode()


@dataclass
class Features:
    values: torch.Tensor  # [N, D] float32, in the ImageSet's order
    cached: int  # rows read from the cache
    computed: int  # rows computed by this call


def cache_files(images: ImageSet, key: str, cache_dir: str | None) -> list[Path]:
    """Where the cache keeps each image's features for the backbone `key`."""
    folder = cache_root(cache_dir) / "features" / key
    return [entry_file(folder, k) for k in image_keys(images.paths)]


def cached_count(images: ImageSet, key: str, cache_dir: str | None) -> int:
    """How many of the images have features in the cache (present; read and checked only when used)."""
    return sum(f.is_file() for f in cache_files(images, key, cache_dir))


@torch.no_grad()
def backbone_features(
    images: ImageSet,
    backbone: nn.Module,
    key: str,
    data_config: dict,
    device: torch.device,
    cache_dir: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    what: str = "features",
) -> Features:
    """The backbone's eval-mode output for every image, from the cache where present; `what`
    names the step in the progress shown while the others are computed."""
    files = cache_files(images, key, cache_dir)
    rows: list[np.ndarray | None] = [None] * len(files)
    dim = getattr(backbone, "num_features", None)
    damaged: list[tuple[Path, str]] = []
    for i, f in enumerate(files):
        rows[i], why = read_row(f, dim)
        if why is not None:
            damaged.append((f, why))
    if damaged:
        path, why = damaged[0]
        log.warning("feature cache: %d entr%s damaged (%s: %s%s); computed again", len(damaged), "y" if len(damaged) == 1 else "ies",
                    path, why, ", ..." if len(damaged) > 1 else "")
    missing = [i for i, r in enumerate(rows) if r is None]
    if not missing:
        log.info("%s: all %d reused from the cache in %s", what, len(files), cache_root(cache_dir))
    if missing:
        for shard in {files[i].parent for i in missing}:
            if shard.is_dir():
                remove_stale_temporaries(shard)  # the row a killed extraction was writing
        subset = ImageSet(images.root, [images.paths[i] for i in missing], None, [])
        loader = eval_loader(subset, eval_transform(data_config), batch_size, workers, pin=device.type == "cuda")
        was_training = backbone.training
        backbone.eval()
        # Creating a loader draws from the global generator: keep training's randomness independent
        # of whether the features were cached.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            done = 0
            step = f"{what} ({len(files) - len(missing)} cached)" if len(missing) < len(files) else what
            for x, _ in tracked(loader, step, len(missing), batch_size_of):
                out = backbone(x.to(device)).float().cpu().numpy()
                for row in out:
                    i = missing[done]
                    rows[i] = row
                    _save_row(files[i], row)
                    done += 1
        backbone.train(was_training)
    return Features(torch.from_numpy(np.stack(rows)).float(), len(files) - len(missing), len(missing))


def read_row(path: Path, dim: int | None) -> tuple[np.ndarray | None, str | None]:
    """A cached row, read as untrusted input (anything can be written into a cache folder):
    (row, None); (None, None) when absent; (None, why) when it is not a regular file, not a
    float32 vector of `dim` values, or not finite."""

    def vector(shape, fortran, dtype) -> str | None:
        if dtype != np.dtype("<f4") or len(shape) != 1 or (dim is not None and shape[0] != dim) or not 0 < shape[0] <= 1 << 20:
            return f"a {dtype} array of shape {shape}, not {dim or 'N'} float32 values"
        return None

    row, why = read_npy(path, vector)
    if row is not None and not np.isfinite(row).all():
        return None, "values that are not finite"
    return row, why


def read_npy(path: Path, refuse) -> tuple[np.ndarray | None, str | None]:
    """A .npy cache entry read as untrusted input: (array, None); (None, None) when absent; (None,
    why) when it is not a regular file, not a .npy file, is cut short, does not end with the key
    its name says (key_trailer), or `refuse(shape, fortran, dtype)` names what is wrong with its
    header. The header is checked before any data is read, so a file claiming a huge shape
    allocates nothing."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, reason(exc)
    if not stat.S_ISREG(mode):
        return None, "not a regular file"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return None, f"a .npy file of format {version}"
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            why = refuse(shape, fortran, dtype)
            if why is not None:
                return None, why
            size = int(np.prod(shape)) * dtype.itemsize
            trailer = key_trailer(path)
            data = bytearray(size + len(trailer) + 1)  # writable: torch.from_numpy warns on a read-only array
            length = f.readinto(data)
    except (OSError, ValueError) as exc:
        return None, reason(exc)
    if length < size:
        return None, f"{length} bytes of data, not {size}"
    if data[size:length] != trailer:
        return None, "not the entry of the image its name says (another image's, or written by an older golabels)"
    return np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize).reshape(shape), None


def save_entry(path: Path, array: np.ndarray, what: str) -> None:
    """Write a cache entry atomically: the .npy data, then key_trailer. `what` names the cache in
    an error. A folder where the entry goes (a file, a link or a FIFO is replaced) is named as
    such: no free space or permission would help there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            raise InputError(f"the {what} cache holds a folder where an entry goes, at {path}", "remove it (the cache "
                             "rebuilds itself), or pass another --cache-dir")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array, allow_pickle=False)
            f.write(key_trailer(path))
    except OSError as exc:
        raise InputError(f"cannot write the {what} cache in {path.parent} ({reason(exc)})",
                         "pass --cache-dir in a writable folder with free space") from exc


def _save_row(path: Path, row: np.ndarray) -> None:
    save_entry(path, row.astype(np.float32), "feature")
