"""Further target domains from the data at hand: an image folder under a corruption, at two severities.

Two Office-31 tasks are too few to choose a default on (issue 42). This writes DOMAIN-KIND-SEVERITY
beside DOMAIN under --root, the same class folders and file names, each image resized to a
shorter side of 256 px (what a 224 px backbone's evaluation transform reads) and then corrupted:

    blur       Gaussian blur, radius 1.5 / 3 px                          (a soft or shaken camera)
    noise      additive Gaussian noise, sigma 0.08 / 0.16 of the range    (a small sensor in low light)
    jpeg       JPEG at quality 20 / 8                                     (a compressing uplink)
    contrast   pixels pulled toward the image mean, to 40 % / 20 %        (haze, a washed-out screen)
    colour     a white-balance shift, R x 1.3 / 1.6, B x 0.7 / 0.4        (another light, another camera)
    pixelate   averaged over 6 x 6 / 10 x 10 px blocks                    (a low-resolution sensor, digital zoom)
    grayscale  60 % / 100 % of the saturation removed                     (a monochrome or night camera)
    haze       blended toward a light airlight (0.85), transmission 0.6 / 0.35  (fog, glare)
    shift      a crop of 75 % / 60 % of each side at a corner, resized back  (objects off-centre and cut)

Images other than `jpeg`'s are saved as JPEG at quality 95. Noise and the corner of a shifted crop
are drawn from the file's path, so a domain is the same bytes on every run. A finished domain (its marker file
.complete) is left as it is; a half-written one is written again.

    python benchmarks/make_domains.py --root /tmp/golabels-data --domains webcam,amazon --kinds blur,noise --severities 1,2
"""

from __future__ import annotations

import argparse
import io
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from golabels.hooks import image_files, load_rgb, resize_shorter

SIZE = 256
SAVE_QUALITY = 95
SEVERITIES = {"blur": (1.5, 3.0), "noise": (0.08, 0.16), "jpeg": (20, 8), "contrast": (0.4, 0.2), "colour": (0.3, 0.6),
              "pixelate": (6, 10), "grayscale": (0.6, 1.0), "haze": (0.6, 0.35), "shift": (0.75, 0.6)}
AIRLIGHT = 0.85
KINDS = tuple(SEVERITIES)


def corrupt(image: Image.Image, kind: str, severity: int, key: str) -> tuple[Image.Image, int]:
    """The corrupted image and the JPEG quality to save it at."""
    level = SEVERITIES[kind][severity - 1]
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(level)), SAVE_QUALITY
    if kind == "pixelate":
        small = image.resize((max(1, image.width // int(level)), max(1, image.height // int(level))), Image.Resampling.BOX)
        return small.resize(image.size, Image.Resampling.NEAREST), SAVE_QUALITY
    if kind == "shift":
        width, height = round(image.width * level), round(image.height * level)
        corner = zlib.crc32(f"{key}:shift".encode()) % 4  # which corner the crop keeps
        left, top = (image.width - width) * (corner % 2), (image.height - height) * (corner // 2)
        return image.crop((left, top, left + width, top + height)).resize(image.size, Image.Resampling.BICUBIC), SAVE_QUALITY
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(level))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), int(level)
    x = np.asarray(image, dtype=np.float32) / 255.0
    if kind == "noise":
        rng = np.random.default_rng(zlib.crc32(f"{key}:{severity}".encode()))
        x = x + rng.normal(0.0, level, x.shape).astype(np.float32)
    elif kind == "contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = mean + (x - mean) * level
    elif kind == "colour":
        x = x * np.array([1 + level, 1.0, 1 - level], dtype=np.float32)
    elif kind == "grayscale":
        gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = x + (gray[..., None] - x) * level
    elif kind == "haze":
        x = x * level + AIRLIGHT * (1 - level)
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)), SAVE_QUALITY


def make_domain(root: Path, domain: str, kind: str, severity: int) -> Path:
    source, out = root / domain, root / f"{domain}-{kind}-{severity}"
    if (out / ".complete").is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    for path in image_files(source):
        relative = path.relative_to(source)
        image, quality = corrupt(resize_shorter(load_rgb(path), SIZE, "bicubic"), kind, severity, relative.as_posix())
        target = (out / relative).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "JPEG", quality=quality)
    (out / ".complete").write_text("")
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the folder holding the domains; the new ones are written beside them")
    parser.add_argument("--domains", required=True, help="comma-separated domain folders under --root")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--severities", default="1,2")
    args = parser.parse_args(argv)
    root = Path(args.root)
    kinds, severities = args.kinds.split(","), [int(s) for s in args.severities.split(",")]
    for kind in kinds:
        if kind not in SEVERITIES:
            raise SystemExit(f"make_domains.py: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not all(s in (1, 2) for s in severities):
        raise SystemExit("make_domains.py: --severities takes 1 and 2")
    made = [make_domain(root, domain, kind, s) for domain in args.domains.split(",") for kind in kinds for s in severities]
    for path in made:
        print(path)
    return made


if __name__ == "__main__":
    main()
