"""A long-tailed copy of an ImageFolder tree, made of links (no image is copied).

Class k of C (in the chosen order) keeps the fraction R^(-k/(C-1)) of its images, at least 5:
with --order head-first the first class (sorted by name) keeps everything and the last 1/R of
its images; tail-first reverses it. Which images are kept is seeded. Hard links are made where
the file system allows, symbolic links elsewhere.

    python benchmarks/longtail.py /tmp/golabels-data/usps /tmp/lt/usps-head --ratio 20 --order head-first --seed 0
    python benchmarks/longtail.py /tmp/golabels-data/mnist /tmp/lt/mnist-tail --ratio 20 --order tail-first --seed 0

With --like REF instead of --ratio, the copy takes REF's class proportions (same class names):
the largest subset with them, n_k = floor(s * ref_k), s = min_k n_k / ref_k. It removes a label
shift between two folders and keeps everything else, to test whether the shift is what hurts:

    python benchmarks/longtail.py /tmp/golabels-data/usps /tmp/lt/usps-like-mnist --like /tmp/golabels-data/mnist --seed 0
"""

from __future__ import annotations

import argparse
import math
import os
import random
from pathlib import Path

from golabels.hooks import IMAGE_EXTENSIONS

MIN_PER_CLASS = 5


def kept_counts(counts: list[int], ratio: float, order: str) -> list[int]:
    """Images kept per class (classes in sorted-name order) for imbalance `ratio`."""
    c = len(counts)
    out = []
    for i, n in enumerate(counts):
        k = i if order == "head-first" else c - 1 - i
        fraction = ratio ** (-k / (c - 1)) if c > 1 else 1.0
        out.append(min(n, max(MIN_PER_CLASS, math.floor(n * fraction + 0.5))))
    return out


def matched_counts(counts: list[int], reference: list[int]) -> list[int]:
    """Images kept per class for the largest subset in `reference`'s class proportions."""
    scale = min(n / r for n, r in zip(counts, reference) if r)
    return [math.floor(scale * r + 1e-9) for r in reference]


def _images(folder: Path, classes: list[str]) -> dict[str, list[Path]]:
    return {c: sorted(p for p in (folder / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) for c in classes}


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(src.resolve(), dst)


def write_longtail(source: str | Path, out: str | Path, ratio: float | None, order: str, seed: int,
                   like: str | Path | None = None) -> dict[str, int]:
    source, out = Path(source), Path(out)
    if (ratio is None) == (like is None):
        raise SystemExit("error: give either --ratio or --like")
    if ratio is not None and ratio < 1:
        raise SystemExit("error: --ratio must be at least 1")
    if order not in ("head-first", "tail-first"):
        raise SystemExit("error: --order must be head-first or tail-first")
    if not source.is_dir():
        raise SystemExit(f"error: {source} is not a folder")
    if out.exists():
        raise SystemExit(f"error: {out} already exists — choose a new output folder")
    classes = _classes(source)
    if len(classes) < 2:
        raise SystemExit(f"error: {source} needs at least two class folders")
    files = _images(source, classes)
    if like is None:
        keep = kept_counts([len(files[c]) for c in classes], ratio, order)
    else:
        like = Path(like)
        if not like.is_dir() or _classes(like) != classes:
            raise SystemExit(f"error: --like {like} must be a folder with the same class folders as {source}")
        reference = [len(v) for v in _images(like, classes).values()]
        if not any(reference):
            raise SystemExit(f"error: --like {like} holds no images")
        keep = matched_counts([len(files[c]) for c in classes], reference)
    rng = random.Random(seed)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        raise SystemExit(f"error: {tmp} exists (a previous run was cut short) — remove it")
    for c, k in zip(classes, keep):
        (tmp / c).mkdir(parents=True)
        for i, path in enumerate(sorted(rng.sample(files[c], k))):
            _link(path, tmp / c / f"{i:06d}-{path.name}")
    tmp.rename(out)  # the folder appears complete or not at all
    return dict(zip(classes, keep))


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="an ImageFolder tree: SOURCE/<class>/<images>")
    parser.add_argument("out", help="the new folder (must not exist)")
    parser.add_argument("--ratio", type=float, help="largest / smallest class size")
    parser.add_argument("--like", help="an ImageFolder tree whose class proportions the copy takes (instead of --ratio)")
    parser.add_argument("--order", choices=("head-first", "tail-first"), default="head-first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_longtail(args.source, args.out, args.ratio, args.order, args.seed, args.like)
    print(" ".join(f"{c}:{n}" for c, n in counts.items()), f"({sum(counts.values())} images) in {args.out}")
    return counts


if __name__ == "__main__":
    main()
