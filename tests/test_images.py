"""The torch-free preprocessing equals timm's eval transform, pixel for pixel."""

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
