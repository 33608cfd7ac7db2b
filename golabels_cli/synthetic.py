"""Small built-in two-domain image sets: digits for `golabels demo`, shapes for the tests.

Digits (`make_digit_domains`, the demo): the ten digits drawn with Pillow's bundled font, light on
dark, slightly rotated and shifted. Source: small glyphs with a thin stroke, padded like MNIST.
Target: larger glyphs, some with a bolder stroke, filling more of the frame like USPS. A model
trained on the source alone reads about a third of the target right; golabels' defaults (CDAN+E,
BatchNorm statistics re-estimated on the target) about two thirds (benchmarks/RESULTS.md,
"--bn-stats": +28 to +33 points over six seeds). Other shifts were tried and dropped there: on
textured, inverted or blurred targets nothing trained from scratch gained.

Shapes (`make_two_domains`, the tests): three classes. Source: dark shapes on a light background.
Target: bright colored shapes on a dark, noisy background. Inside every class, 85% of the images
form a head cluster (large, centered shapes) and 15% a tail cluster (small shapes near a corner):
the intra-class imbalance Go-labels is designed for. No adaptation method gains on it at the
tests' scale: it exercises the machinery, not the method.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

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


DIGITS = tuple(str(d) for d in range(10))


def render_digit(digit: str, domain: str, rng: random.Random, fonts: dict, size: int = 32) -> Image.Image:
    small = domain == "source"
    font_size = rng.randint(13, 17) if small else rng.randint(19, 23)
    stroke = 0 if small else rng.choice([0, 1])
    if font_size not in fonts:
        fonts[font_size] = ImageFont.load_default(size=font_size)
    font = fonts[font_size]
    background, ink = rng.randint(0, 40), rng.randint(200, 255)
    img = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), digit, font=font, stroke_width=stroke)
    x = (size - (right - left)) / 2 - left + rng.uniform(-2, 2)
    y = (size - (bottom - top)) / 2 - top + rng.uniform(-2, 2)
    draw.text((x, y), digit, fill=ink, font=font, stroke_width=stroke, stroke_fill=ink)
    return img.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=background).convert("RGB")


def make_digit_domains(root: str | Path, per_class: int = 150, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Write root/source/<digit>/*.png and root/target/<digit>/*.png; returns the two folders."""
    root = Path(root)
    rng, fonts = random.Random(seed), {}
    for domain in ("source", "target"):
        for digit in DIGITS:
            folder = root / domain / digit
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                render_digit(digit, domain, rng, fonts, size).save(folder / f"{domain}_{digit}_{i:04d}.png")
    return root / "source", root / "target"
