"""The torch-free preprocessing equals timm's eval transform, pixel for pixel."""

import os

import numpy as np
import pytest
from PIL import Image

from golabels_cli.images import image_files, to_array


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("input_size", [(3, 32, 32), (3, 40, 48)])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0, 1.15])
def test_to_array_equals_timm_eval_transform(crop_mode, interpolation, input_size, crop_pct):
    from timm.data import create_transform

    cfg = {"input_size": list(input_size), "interpolation": interpolation, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225], "crop_pct": crop_pct, "crop_mode": crop_mode}
    timm_transform = create_transform(**cfg, is_training=False)
    for seed, (w, h) in enumerate([(64, 48), (30, 77), (32, 32), (17, 9)]):
        img = _image(w, h, seed)
        expected = timm_transform(img).numpy()
        got = to_array(img, cfg)
        assert got.shape == expected.shape == tuple(input_size)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_image_files_skips_hidden_and_non_images(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    for name in ("a/x.PNG", "a/y.jpg", "a/.z.png", "a/.hidden/w.png", "a/notes.txt", "b.webp"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)) == ["a/x.PNG", "a/y.jpg", "b.webp"]


# ---- images in the wild ------------------------------------------------------------------------


def test_load_rgb_converts_every_mode_and_orientation(tmp_path):
    from golabels_cli.images import DRAFT_SIDE, load_rgb

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    img = load_rgb(tmp_path / "rgba.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (255, 0, 0)

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    img = load_rgb(tmp_path / "palette.png")
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (0, 0, 255)

    gray16 = Image.fromarray(np.array([[0, 32768], [65535, 65535]], dtype=np.uint16))
    gray16.save(tmp_path / "gray16.png")
    img = load_rgb(tmp_path / "gray16.png")
    assert img.mode == "RGB" and img.getpixel((0, 1)) == (255, 255, 255) and 120 <= img.getpixel((1, 0))[0] <= 135

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    img = load_rgb(tmp_path / "cmyk.jpg")
    assert img.mode == "RGB" and img.getpixel((4, 4))[0] > 200 and img.getpixel((4, 4))[1] < 60

    rotated = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 degrees clockwise to display"
    rotated.save(tmp_path / "exif.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "exif.jpg").size == (20, 40)

    Image.new("L", (10000, 10000), 90).save(tmp_path / "huge.jpg", quality=50)
    img = load_rgb(tmp_path / "huge.jpg")  # decoded at 1/4 scale: 19 MB instead of 300
    assert img.mode == "RGB" and DRAFT_SIDE <= min(img.size) < 10000


def test_check_image_finds_what_verify_misses(tmp_path):
    import io

    from golabels_cli.images import check_image

    buffer = io.BytesIO()
    _image(64, 64, 0).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(tmp_path / "cut.jpg") as img:
        img.verify()  # PIL's own check passes a truncated JPEG ...
    assert "truncated" in check_image(tmp_path / "cut.jpg")  # ... decoding does not
    (tmp_path / "empty.png").write_bytes(b"")
    assert check_image(tmp_path / "empty.png") == "empty file"
    (tmp_path / "text.jpg").write_text("hello")
    assert "cannot identify" in check_image(tmp_path / "text.jpg")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "broken.png")
    assert "no such file" in check_image(tmp_path / "broken.png")


def test_image_files_follows_links_once_and_survives_loops(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")  # a/loop/loop/loop/... forever, if followed blindly
    os.symlink(tmp_path / "a", tmp_path / "again")
    problems = []
    files = image_files(tmp_path, problems)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/x.png"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p, _ in problems) == ["a/loop", "again"]
