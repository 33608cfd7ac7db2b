"""A small built-in two-domain image set for `golabels demo` and the tests.

Three shape classes. Source: dark shapes on a light background. Target: bright colored shapes
on a dark, noisy background, the same classes under a clear style shift. Inside every class,
85% of the images form a head cluster (large, centered shapes) and 15% a tail cluster (small
shapes near a corner): the intra-class imbalance Go-labels is designed for.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")
TAIL_FRACTION = 0.15


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def render(kind: str, domain: str, tail: bool, rng: random.Random, size: int = 32) -> Image.Image:
    if domain == "source":
        background = tuple(rng.randint(200, 250) for _ in range(3))
        fill = tuple([rng.randint(10, 70)] * 3)
    else:
        background = tuple(rng.randint(0, 60) for _ in range(3))
        hue = rng.choice([(255, 80, 80), (80, 255, 120), (90, 140, 255), (255, 220, 60)])
        fill = tuple(min(255, max(0, c + rng.randint(-30, 30))) for c in hue)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    if tail:
        r = size * rng.uniform(0.12, 0.17)
        corner = rng.choice([(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)])
        cx, cy = (corner[0] + rng.uniform(-0.05, 0.05)) * size, (corner[1] + rng.uniform(-0.05, 0.05)) * size
    else:
        r = size * rng.uniform(0.26, 0.36)
        cx, cy = size * rng.uniform(0.42, 0.58), size * rng.uniform(0.42, 0.58)
    _shape(draw, kind, cx, cy, r, fill)
    if domain == "target":
        noise = Image.effect_noise((size, size), rng.uniform(20, 40)).convert("RGB")
        img = Image.blend(img, noise, 0.25).filter(ImageFilter.GaussianBlur(0.6))
    return img


def make_two_domains(root: str | Path, per_class: int = 100, size: int = 32, seed: int = 0, classes=CLASSES) -> tuple[Path, Path]:
    """Write root/source/<class>/*.png and root/target/<class>/*.png; returns the two folders."""
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"no renderer for classes {sorted(unknown)}; choose from {CLASSES}")
    root = Path(root)
    rng = random.Random(seed)
    for domain in ("source", "target"):
        for kind in classes:
            folder = root / domain / kind
            folder.mkdir(parents=True, exist_ok=True)
            tails = max(1, round(per_class * TAIL_FRACTION))
            for i in range(per_class):
                render(kind, domain, i < tails, rng, size).save(folder / f"{domain}_{kind}_{i:04d}.png")
    return root / "source", root / "target"
