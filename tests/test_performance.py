"""Speed features that must not change results: CUDA-only settings, --freeze-backbone's feature
cache, --cache-images and reduced-size JPEG decoding (issue 5). No timing here: benchmarks/ does that."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli


def same_weights(a, b):
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return all(torch.equal(x[k], y[k]) for k in x)


def test_cuda_settings_are_not_applied_on_cpu(domains):
    from golabels_cli.config import build_config
    from golabels_cli.training import Speed, build, speed_settings

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False,
                        "image_size": 32, "device": "cpu", "batch_size": 4})
    assert speed_settings(torch.device("cpu"), cfg) == Speed()  # every fast-path switch off
    on_cuda = speed_settings(torch.device("cuda"), cfg)
    assert on_cuda.autocast == torch.bfloat16 and on_cuda.channels_last and on_cuda.fused_optimizer
    assert on_cuda.pin_memory and on_cuda.cudnn_benchmark
    cfg.deterministic = True
    assert not speed_settings(torch.device("cuda"), cfg).cudnn_benchmark
    cfg.deterministic = False
    t = build(cfg)
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # not channels_last
    assert not t.optimizer.defaults.get("fused") and not torch.backends.cudnn.benchmark


def test_freeze_backbone_reuses_its_cache_and_notices_changed_files(copy_domains, tmp_path):
    source, target = copy_domains
    cache = tmp_path / "cache"
    args = ("--freeze-backbone", "--method", "cdan-e+bnm", "--cache-dir", cache, "--iters", "8", "--eval-dir", source)

    first = json.loads(cli("adapt", source, target, *TINY, *args, "--out", tmp_path / "a", "--json").stdout)
    # the source's training split (21) and held-out split (3), the target (24)
    assert first["features"]["source"] == {"cached": 0, "computed": 21} and first["features"]["source_val"] == {"cached": 0, "computed": 3}
    assert first["features"]["target"] == {"cached": 0, "computed": 24}
    assert first["features"]["eval"] == {"cached": 24, "computed": 0}  # the same images as the source: shared
    second = json.loads(cli("adapt", source, target, *TINY, *args, "--out", tmp_path / "b", "--json").stdout)
    assert second["features"] == {"source": {"cached": 21, "computed": 0}, "source_val": {"cached": 3, "computed": 0},
                                  **{r: {"cached": 24, "computed": 0} for r in ("target", "eval")}}
    assert same_weights(tmp_path / "a", tmp_path / "b")  # a warm cache trains exactly as a cold one
    # A copy made of links (benchmarks/longtail.py's) is the same files: read from the cache.
    linked = tmp_path / "linked"
    for f in target.rglob("*.png"):
        (linked / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, linked / f.parent.name / f.name)
    links = json.loads(cli("adapt", source, linked, *TINY, *args, "--out", tmp_path / "links", "--json").stdout)
    assert links["features"]["target"] == {"cached": 24, "computed": 0}

    # Evaluating cached features is evaluating the images through the frozen backbone.
    report = json.loads(cli("eval", tmp_path / "a", source, "--json", "--device", "cpu").stdout)
    assert report["accuracy"] == pytest.approx(first["target_acc"])

    # A changed image file is computed again; the others come from the cache.
    changed = sorted(target.rglob("*.png"))[0]
    Image.new("RGB", (32, 32), (255, 0, 255)).save(changed)
    third = json.loads(cli("adapt", source, target, *TINY, *args, "--out", tmp_path / "c", "--json").stdout)
    assert third["features"]["target"] == {"cached": 23, "computed": 1}
    assert third["features"]["source"] == {"cached": 21, "computed": 0}

    # The backbone did not move: it is the one every run starts from.
    a, start = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "c" / "model.safetensors"))
    assert all(torch.equal(a[k], start[k]) for k in a if k.startswith("backbone."))


def test_cache_images_trains_exactly_as_reading_from_disk(domains, tmp_path):
    source, target = domains
    plain = adapt_tiny(source, target, tmp_path / "plain", "--iters", "6")
    cached = adapt_tiny(source, target, tmp_path / "cached", "--iters", "6", "--cache-images")
    assert same_weights(plain, cached)


def test_large_jpegs_decode_at_reduced_scale_for_training(tmp_path):
    from golabels_cli.data import decode_for_training
    from golabels_cli.images import load_rgb

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1000, 1500, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=90)
    assert load_rgb(tmp_path / "big.jpg").size == (1500, 1000)  # eval: full decode, timm's pixels
    assert load_rgb(tmp_path / "big.jpg", min_side=256).size == (750, 500)  # 1/2 scale still covers 256
    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bilinear"}
    assert min(decode_for_training(tmp_path / "big.jpg", cfg).size) == 256


def test_help_lists_the_speed_options():
    text = cli("adapt", "--help").stdout
    for option in ("--freeze-backbone", "--cache-dir", "--cache-images", "--compile", "--deterministic", "--save-every", "--resume"):
        assert option in text
