"""Image folders in, batches out: scanning, decoding, transforms, samplers and loaders.

Source folders are `SRC/<class>/**/<image>`; class names are the sorted sub-folder names.
Target folders are any tree of images, and their layout must never influence training: target
files are ordered by file name (path only breaks ties), so renaming, shuffling or flattening
class sub-folders gives the same order, the same batches and the same weights.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from .remedies import IMBALANCE_WARNING, remedy_hint, small_target_warning
from .errors import InputError, reason
from .images import (IMAGE_EXTENSIONS, Scan, folder_identity, image_files, inspect_image, load_rgb, once_per_folder, resize_shorter,
                     scale_size, to_array)
from .progress import tracked

log = logging.getLogger("golabels")


@dataclass
class ImageSet:
    root: Path
    paths: list[Path]
    labels: list[int] | None  # None for an unlabeled (target) folder
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    sizes: list[tuple[int, int]] | None = None  # (width, height) of each image, as stored

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int], keep_skipped: bool = False) -> "ImageSet":
        """The images at `indices`, in that order (the skipped files stay with one subset only)."""
        return ImageSet(
            self.root, [self.paths[i] for i in indices],
            [self.labels[i] for i in indices] if self.labels is not None else None,
            self.classes, self.skipped if keep_skipped else [],
            [self.sizes[i] for i in indices] if self.sizes is not None else None,
        )


def _check_dir(root: str | Path, role: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise InputError(f"{role} folder {root} does not exist", "check the path")
    if not root.is_dir():
        raise InputError(f"{role} path {root} is a file, not a folder", "pass the folder that holds the images")
    return root


def _keep_readable(paths: list[Path], role: str, skipped: list[tuple[Path, str]]) -> dict[Path, tuple[int, int]]:
    """{path: size} of the paths that decode completely; the others are warned about once and added to `skipped`."""
    # Decoding releases the GIL, so threads check several images at once.
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        results = list(tracked(pool.map(inspect_image, paths), f"checking the {role} images", len(paths)))
    good = {}
    for path, (why, size) in zip(paths, results):
        if why is None:
            good[path] = size
        else:
            skipped.append((path, why))
            log.warning("skipping unreadable %s image %s (%s)", role, path, why)
    return good


def _report(problems: list[tuple[Path, str]], role: str, skipped: list[tuple[Path, str]]) -> None:
    """What image_files could not take: folders it could not list, image names that are not regular files."""
    for path, why in problems:
        skipped.append((path, why))
        if why.startswith(("another name of", "a link to an image of")):
            log.warning("skipping %s image %s (%s)", role, path, why)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            log.warning("skipping unreadable %s image %s (%s)", role, path, why)
        else:
            log.warning("skipping %s folder %s (%s)", role, path, why)


@once_per_folder
def scan_labeled(root: str | Path, role: str = "source") -> ImageSet:
    """A labeled folder: one sub-folder per class, images anywhere below it."""
    root = _check_dir(root, role)
    skipped: list[tuple[Path, str]] = []
    class_dirs, owners = _class_folders(root, role, skipped)
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        log.warning("ignoring %d images directly in %s: only images inside class folders are labeled", len(loose), root)
    scan = Scan.once_per_file(owners)
    per_class = []
    for class_dir in class_dirs:
        problems: list[tuple[Path, str]] = []
        files = sorted(image_files(class_dir, problems, scan))
        _report(problems, role, skipped)
        if not files:
            raise InputError(f"class folder {class_dir} has no images", "add images or remove the folder")
        per_class.append(files)
    readable = _keep_readable([f for files in per_class for f in files], role, skipped)
    paths, labels = [], []
    for label, (class_dir, files) in enumerate(zip(class_dirs, per_class)):
        files = [f for f in files if f in readable]
        if not files:
            raise InputError(f"every image in class folder {class_dir} is unreadable", "check the files")
        paths += files
        labels += [label] * len(files)
    return ImageSet(root, paths, labels, [d.name for d in class_dirs], skipped, [readable[p] for p in paths])


def _class_folders(root: Path, role: str, skipped: list[tuple[Path, str]]) -> tuple[list[Path], dict[tuple[int, int], Path]]:
    """The class folders of a labeled folder, by name, and {identity: folder}: a second link to a
    class folder (c -> a) is not a class of its own, its images are a's (warned, in `skipped`)."""
    owners: dict[tuple[int, int], Path] = {}
    class_dirs = []
    # Real folders first, then links: a link to a class folder (alink -> zcat) never takes the
    # class from the folder it names, whatever the two names sort.
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: (p.is_symlink(), p.name))
    for folder in folders:
        try:
            key = folder_identity(folder)
        except OSError as exc:
            skipped.append((folder, reason(exc)))
            log.warning("skipping %s folder %s (%s)", role, folder, reason(exc))
            continue
        if key in owners:
            why = f"a link to class folder {owners[key].name}: not a class of its own, its images are {owners[key].name}'s"
            skipped.append((folder, why))
            log.warning("skipping %s folder %s (%s)", role, folder, why)
            continue
        owners[key] = folder
        class_dirs.append(folder)
    class_dirs.sort(key=lambda p: p.name)  # classes are the folder names, sorted
    if not class_dirs:
        raise InputError(f"{role} folder {root} has no class sub-folders", f"lay it out as {root}/<class>/<image>")
    return class_dirs, owners


@once_per_folder
def scan_unlabeled(root: str | Path, role: str = "target") -> ImageSet:
    """Any tree of images; its folder names are not read, and its order is by file name."""
    root = _check_dir(root, role)
    skipped: list[tuple[Path, str]] = []
    problems: list[tuple[Path, str]] = []
    files = sorted(image_files(root, problems, Scan.once_per_file()), key=lambda p: (p.name, str(p.relative_to(root))))
    _report(problems, role, skipped)
    if not files:
        raise InputError(f"{role} folder {root} has no images", f"supported: {', '.join(sorted(IMAGE_EXTENSIONS))}")
    readable = _keep_readable(files, role, skipped)
    if not readable:
        raise InputError(f"every image in {role} folder {root} is unreadable", "check the files")
    files = [f for f in files if f in readable]
    return ImageSet(root, files, None, [], skipped, [readable[f] for f in files])


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) indices: round(fraction * n) images of each class held out, chosen at
    random with the seed, but never a class's last training image. Both lists stay sorted."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    held: list[int] = []
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for label in sorted(by_class):
        members = by_class[label]
        n = min(round(fraction * len(members)), len(members) - 1)
        if n > 0:
            held += [members[j] for j in torch.randperm(len(members), generator=g)[:n].tolist()]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def sample_indices(n: int, k: int, seed: int, stream: int) -> list[int]:
    """k of range(n) at random (all when k is 0 or >= n), sorted."""
    if k <= 0 or k >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + stream)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


# ---- the start-of-run data report ---------------------------------------------------------------

FEW_IMAGES = 5  # a class with fewer source images is warned about


def _size_spread(sizes: list[tuple[int, int]] | None) -> dict[str, list[int]] | None:
    if not sizes:
        return None
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    return {"width": [widths[0], widths[len(widths) // 2], widths[-1]], "height": [heights[0], heights[len(heights) // 2], heights[-1]]}


def class_counts(images: ImageSet) -> list[int]:
    counts = [0] * len(images.classes)
    for label in images.labels:
        counts[label] += 1
    return counts


def imbalance_ratio(counts: list[int]) -> float:
    """Images in the largest class over images in the smallest, from class_counts()."""
    return max(counts) / max(1, min(counts))


def shared_images(source: ImageSet, target: ImageSet) -> int:
    """Target images that are source images too (the same file, through any path or link)."""
    real = {os.path.realpath(p) for p in source.paths}
    return sum(os.path.realpath(p) in real for p in target.paths)


def data_report(source: ImageSet, target: ImageSet, held_out: list[int], hint: str | None = remedy_hint([]),
                small_target_hint: str | None = None) -> dict:
    """What the source and target folders hold, and what looks wrong with them (`warnings`).
    Sizes are [smallest, median, largest]; the imbalance ratio is largest / smallest class.
    `hint`: the end of the imbalance warning, for the recipe that runs; None: a recipe the
    source's imbalance does not concern (no discriminator), which is not warned about it.
    `small_target_hint`: the end of the warning for a target too small to adapt on; None: a
    recipe that does not adapt to the target."""
    counts = class_counts(source)
    held = [0] * len(source.classes)
    for i in held_out:
        held[source.labels[i]] += 1
    ratio = imbalance_ratio(counts)
    warnings = []
    few = [f"{name!r} ({n})" for name, n in zip(source.classes, counts) if n < FEW_IMAGES]
    if few:
        warnings.append(f"source class{'es' if len(few) > 1 else ''} with fewer than {FEW_IMAGES} images: {', '.join(few[:8])}"
                        + (" …" if len(few) > 8 else "") + "; the classifier barely sees them")
    if ratio > IMBALANCE_WARNING and hint is not None:
        big, small = counts.index(max(counts)), counts.index(min(counts))
        warnings.append(f"source classes are imbalanced {ratio:.1f}:1 ({source.classes[big]!r} {counts[big]} images, "
                        f"{source.classes[small]!r} {counts[small]}); adversarial alignment can pull target images onto the large classes; "
                        f"{hint}")
    small = small_target_warning(len(target), small_target_hint)
    if small:
        warnings.append(small)
    shared = shared_images(source, target)
    if shared:
        where = ("the target folder is the source folder" if os.path.realpath(source.root) == os.path.realpath(target.root)
                 else "the target folder overlaps the source folder")
        warnings.append(f"{where}: {shared} of the target's {len(target)} images are also source images, so there is "
                        "less (or no) shift to adapt to; pass the folder of the new domain as TARGET")
    return {
        "source_images": len(source),
        "source_per_class": dict(zip(source.classes, counts)),
        "held_out_per_class": dict(zip(source.classes, held)),
        "imbalance_ratio": round(ratio, 3),
        "target_images": len(target),
        "source_sizes": _size_spread(source.sizes),
        "target_sizes": _size_spread(target.sizes),
        "skipped": {"source": len(source.skipped), "target": len(target.skipped)},
        "warnings": warnings,
    }


# ---- transforms -------------------------------------------------------------------------------


def decode_for_training(path: Path, data_config: dict) -> Image.Image:
    """An image as training crops it: shorter side at the eval scale size (256 for 224 px, as in
    TLlib's recipe), so crops don't depend on the photo's resolution; large JPEGs decode at a
    reduced scale that still covers that size."""
    side = scale_size(data_config)
    return resize_shorter(load_rgb(path, min_side=side), side, data_config.get("interpolation", "bilinear"))


def train_transform(data_config: dict, min_crop: float, hflip: float) -> transforms.Compose:
    """Applied to decode_for_training's image: random resized crop, flip, normalize."""
    size = data_config["input_size"][-2:]
    interpolation = transforms.InterpolationMode(data_config.get("interpolation", "bilinear"))
    steps = [transforms.RandomResizedCrop(size, scale=(min_crop, 1.0), interpolation=interpolation)]
    if hflip > 0:
        steps.append(transforms.RandomHorizontalFlip(hflip))
    steps += [transforms.ToTensor(), transforms.Normalize(data_config["mean"], data_config["std"])]
    return transforms.Compose(steps)


def _eval_tensor(img, data_config: dict) -> torch.Tensor:
    return torch.from_numpy(to_array(img, data_config))


def eval_transform(data_config: dict):
    """timm's eval transform, computed by `images.to_array` so that ONNX predict sees the same pixels."""
    return functools.partial(_eval_tensor, data_config=data_config)


# ---- datasets and samplers --------------------------------------------------------------------


class Draw:
    """What a training sampler yields: which image, and the global draw number seeding its augmentation."""

    __slots__ = ("index", "seed")

    def __init__(self, index: int, seed: int):
        self.index, self.seed = index, seed


class TrainImages(Dataset):
    """Augmented training images, each as (image, label, its index in `images`). Each draw's
    augmentation is seeded by the draw itself, so the batches are the same whatever the number of
    loader workers (and a resumed run can replay them). With `decoded` (--cache-images), images
    come from memory instead of the disk, identical."""

    def __init__(self, images: ImageSet, transform, data_config: dict, decoded: list[np.ndarray] | None = None):
        self.images, self.transform, self.data_config, self.decoded = images, transform, data_config, decoded

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, draw: Draw):
        if self.decoded is not None:
            image = Image.fromarray(self.decoded[draw.index])
        else:
            image = decode_for_training(self.images.paths[draw.index], self.data_config)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (the transforms' RNG): torch.manual_seed would also queue a
            # reseed of every lazily initialized accelerator, with a stack trace each, 0.8 ms per
            # image, a third of a small model's CPU step.
            torch.default_generator.manual_seed(draw.seed)
            x = self.transform(image)
        label = self.images.labels[draw.index] if self.images.labels is not None else -1
        return x, label, draw.index


class InfiniteDraws(Sampler):
    """Endless seeded shuffles of range(n); each draw carries a unique augmentation seed.

    With `world` processes, each shuffle is dealt out: rank r takes positions r, r + world, ...
    (n // world of them, the rest of the shuffle is left out), so within a shuffle no two ranks
    draw the same image, and every rank sees the same number of draws per shuffle.
    `start` skips that many of this rank's draws, so a resumed run continues the exact sequence."""

    def __init__(self, n: int, seed: int, stream: int, start: int = 0, rank: int = 0, world: int = 1):
        if n < world:
            raise InputError(f"{n} images cannot be shared by {world} processes", "use fewer --devices")
        self.n, self.seed, self.stream, self.start, self.rank, self.world = n, seed, stream, start, rank, world

    def __iter__(self) -> Iterator[Draw]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream)
        share = self.n // self.world  # this rank's draws per shuffle
        for _ in range(self.start // share):  # whole shuffles already drawn
            torch.randperm(self.n, generator=g)
        shuffle, skip = self.start // share, self.start % share
        base = (self.seed * 1_000_003 + self.stream) * 2**32
        while True:
            perm = torch.randperm(self.n, generator=g)
            for j in range(skip, share):
                position = self.rank + j * self.world  # unique over ranks: the draw's global number
                yield Draw(int(perm[position]), (base + shuffle * self.n + position) % 2**63)
            shuffle, skip = shuffle + 1, 0


class BalancedDraws(Sampler):
    """--balance-source, --balance-target: class-balanced draws. Each draw picks a class uniformly at random, then
    that class's next image in its own endless seeded shuffle, so every class is drawn equally
    often and every image of a class equally often within it (a small class's images repeat more).

    The draws form one global sequence; with `world` processes rank r takes draws r, r + world, ...
    `start` skips that many of this rank's draws (a resumed run continues the exact sequence)."""

    BLOCK = 4096

    def __init__(self, labels: list[int], seed: int, stream: int, start: int = 0, rank: int = 0, world: int = 1):
        self.labels, self.seed, self.stream, self.start, self.rank, self.world = labels, seed, stream, start, rank, world

    def __iter__(self) -> Iterator[Draw]:
        members: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            members.setdefault(label, []).append(i)
        classes = sorted(members)
        base = self.seed * 1_000_003 + self.stream
        pick = torch.Generator().manual_seed(base * 7 + 1)
        shuffles = {c: torch.Generator().manual_seed(base * 7 + 2 + 1_000 * c) for c in classes}
        order: dict[int, list[int]] = {c: [] for c in classes}
        draw, first = 0, self.start * self.world + self.rank
        # Skip whole blocks of draws without making them: only how often each class was drawn
        # matters (it says how far each class's shuffles have gone), so the skip costs C-level work.
        taken = torch.zeros(len(classes), dtype=torch.long)
        while draw + self.BLOCK <= first:
            taken += torch.bincount(torch.randint(len(classes), (self.BLOCK,), generator=pick), minlength=len(classes))
            draw += self.BLOCK
        for c, k in zip(classes, taken.tolist()):
            n = len(members[c])
            for _ in range(k // n):
                torch.randperm(n, generator=shuffles[c])
            if k % n:
                order[c] = [members[c][j] for j in torch.randperm(n, generator=shuffles[c]).tolist()[k % n:]][::-1]
        while True:
            for choice in torch.randint(len(classes), (self.BLOCK,), generator=pick).tolist():
                c = classes[choice]
                if not order[c]:
                    order[c] = [members[c][j] for j in torch.randperm(len(members[c]), generator=shuffles[c]).tolist()][::-1]
                index = order[c].pop()
                if draw >= first and (draw - self.rank) % self.world == 0:
                    yield Draw(index, ((base * 2**32) + draw) % 2**63)
                draw += 1


class EvalImages(Dataset):
    def __init__(self, images: ImageSet, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        label = self.images.labels[i] if self.images.labels is not None else -1
        return self.transform(load_rgb(self.images.paths[i])), label


def ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the main process saves and stops the workers, which
    # must not die first (the step in progress would fail before the state is saved).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_sampler(images: ImageSet, seed: int, stream: int, start: int = 0, rank: int = 0, world: int = 1,
                  balance_by: list[int] | None = None) -> Sampler:
    """InfiniteDraws, or BalancedDraws over `balance_by`: the source labels (--balance-source) or
    the target's pseudo-labels (--balance-target)."""
    if balance_by is not None:
        return BalancedDraws(balance_by, seed, stream, start, rank, world)
    return InfiniteDraws(len(images), seed, stream, start, rank, world)


def train_loader(images: ImageSet, transform, data_config: dict, batch_size: int, seed: int, stream: int, workers: int,
                 pin: bool, start: int = 0, decoded: list[np.ndarray] | None = None, rank: int = 0, world: int = 1,
                 balance_by: list[int] | None = None):
    """Batches of `batch_size` draws from train_sampler, starting at this rank's draw `start`."""
    return DataLoader(
        TrainImages(images, transform, data_config, decoded),
        batch_size=batch_size,
        sampler=train_sampler(images, seed, stream, start, rank, world, balance_by),
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 and pin else None,  # a GPU step is short: keep more batches ready
        worker_init_fn=ignore_interrupts if workers > 0 else None,
    )


def decode_all(images: ImageSet, data_config: dict, memory_fraction: float = 0.5) -> list[np.ndarray] | None:
    """--cache-images: every image as decode_for_training makes it, in memory (uint8), or None
    (with a warning) when that would take more than `memory_fraction` of the free memory."""
    side = scale_size(data_config)
    need = 0
    for path in images.paths:
        with Image.open(path) as img:
            w, h = img.size
        need += 3 * side * max(side, int(side * max(w, h) / max(1, min(w, h))))
    free = free_memory()
    memory_fraction /= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each local process keeps its own copy
    if free is not None and need > memory_fraction * free:
        log.warning("--cache-images: the %d images would take %.1f GB, more than half the %.1f GB free; reading them from disk",
                    len(images), need / 1e9, free / 1e9)
        return None
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(pool.map(lambda p: np.asarray(decode_for_training(p, data_config)), images.paths))
    log.info("--cache-images: %d images decoded into %.2f GB of memory", len(decoded), sum(a.nbytes for a in decoded) / 1e9)
    return decoded


def free_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def eval_loader(images: ImageSet, transform, batch_size: int, workers: int, pin: bool = False):
    return DataLoader(EvalImages(images, transform), batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
                      worker_init_fn=ignore_interrupts if workers > 0 else None)
