"""--augment batched (issue 43): images decoded once, crops drawn per draw, the batch augmented on the device."""

import itertools
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, one_error_line
from golabels_cli.data import InfiniteDraws, scan_labeled, scan_unlabeled
from golabels_cli.decoded import config_key, decode_images, decode_to_scale, read_entry
from golabels_cli.device_batches import CollateCrops, augment, batch_loader, collate_padded, crop_box, device_batches, loader_crop
from golabels_cli.images import resize_and_crop

DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875,
               "interpolation": "bilinear"}
CPU = torch.device("cpu")


def test_crop_boxes_are_torchvisions_distribution_drawn_from_the_draw_alone():
    boxes = [crop_box(40, 60, seed, 0.08, 0.5) for seed in range(2000)]
    assert boxes[:50] == [crop_box(40, 60, seed, 0.08, 0.5) for seed in range(50)]  # the draw's number alone decides
    areas = []
    for (x1, y1, x2, y2), _ in boxes:
        assert 0 <= x1 < x2 <= 60 and 0 <= y1 < y2 <= 40 and all(v == int(v) for v in (x1, y1, x2, y2))
        areas.append((x2 - x1) * (y2 - y1) / (40 * 60))
        assert 3 / 4 - 0.1 <= (x2 - x1) / (y2 - y1) <= 4 / 3 + 0.1 or (x2 - x1, y2 - y1) in ((53, 40), (60, 40))
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    theirs = [h * w / (40 * 60) for _, _, h, w in (RandomResizedCrop.get_params(torch.zeros(1, 40, 60), [0.08, 1.0], [3 / 4, 4 / 3])
                                                   for _ in range(2000))]
    assert min(areas) >= 0.07 and max(areas) <= 1.0 and abs(np.mean(areas) - np.mean(theirs)) < 0.02
    assert abs(np.quantile(areas, 0.9) - np.quantile(theirs, 0.9)) < 0.04
    assert 0.45 < np.mean([flip for _, flip in boxes]) < 0.55
    assert not any(crop_box(40, 60, seed, 0.08, 0.0)[1] for seed in range(200))
    # scale 1 on a wide image: no box of area 1 fits a ratio in [3/4, 4/3]; the fallback is centered
    assert crop_box(40, 100, 3, 1.0, 0.0)[0] == (23.0, 0.0, 76.0, 40.0)


def test_decoded_images_are_the_eval_geometry_before_its_center_crop(domains):
    source, _ = domains
    images = scan_labeled(source)
    config = {**DATA_CONFIG, "input_size": (3, 28, 28)}
    array = decode_to_scale(images.paths[0], config)
    assert array.dtype == np.uint8 and min(array.shape[:2]) == 32 and array.flags.writeable
    top, left = (array.shape[0] - 28) // 2, (array.shape[1] - 28) // 2
    from golabels_cli.images import load_rgb

    assert np.array_equal(array[top:top + 28, left:left + 28], np.asarray(resize_and_crop(load_rgb(images.paths[0]), config)))


def _uniform_photo(tmp_path, size=(90, 60)):
    """A smooth picture: resampling kernels that differ only in antialiasing agree on it."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 255 / sum(size)], -1).astype(np.uint8)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(np.roll(pixels, 7 * i, axis=1)).save(folder / f"{i}.png")
    return scan_unlabeled(folder)


def test_the_accelerators_roi_align_and_the_cpus_loader_crops_give_the_same_batch(tmp_path):
    """The accelerator path (padded batch, roi_align on the device) runs here on the CPU: it must
    crop, flip and normalize what the CPU path does, up to the resampling kernels' rounding."""
    images = _uniform_photo(tmp_path)
    decoded = decode_images(images, DATA_CONFIG, None, "decoding")
    mean, std = torch.tensor(DATA_CONFIG["mean"]), torch.tensor(DATA_CONFIG["std"])
    from golabels_cli.device_batches import DecodedDraws

    draws = DecodedDraws(images, decoded, 0.3, 0.5)
    items = [draws[d] for d in itertools.islice(iter(InfiniteDraws(len(images), 0, 0)), 16)]
    assert any(flip for _, _, flip, *_ in items) and not all(flip for _, _, flip, *_ in items)
    on_cpu, _ = augment(CollateCrops((32, 32))(items), CPU, (32, 32), mean, std)
    on_device, _ = augment(collate_padded(items), CPU, (32, 32), mean, std)
    assert on_cpu.shape == on_device.shape == (16, 3, 32, 32)
    difference = (on_cpu - on_device).abs() * std.view(1, 3, 1, 1) * 255  # in pixel levels
    assert difference.mean() < 2.0 and difference.max() < 16


def test_batches_are_the_same_for_any_number_of_workers_and_replay_from_any_draw(domains):
    source, _ = domains
    images = scan_labeled(source)
    decoded = decode_images(images, DATA_CONFIG, None, "decoding")

    def batches(workers, start=0, count=6):
        loader = batch_loader(images, decoded, 0.08, 0.5, 4, 3, 0, workers, False, start, crop_to=loader_crop(CPU, DATA_CONFIG))
        return [(x.clone(), y) for x, y, _ in itertools.islice(device_batches(loader, CPU, DATA_CONFIG), count)]

    reference = batches(0)
    for workers in (1, 2):
        assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(reference, batches(workers)))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(reference[2:], batches(0, start=8, count=4)))  # 2 batches of 4 skipped


def test_images_that_do_not_fit_in_memory_go_through_the_disk_cache_read_as_untrusted(domains, tmp_path, monkeypatch, caplog):
    import golabels_cli.decoded as decoded_module

    source, _ = domains
    images = scan_labeled(source)
    in_memory = decode_images(images, DATA_CONFIG, None, "decoding")
    assert in_memory.in_memory
    monkeypatch.setattr(decoded_module, "free_memory", lambda: 1000)  # 1 kB free: nothing fits
    cache = tmp_path / "cache"
    on_disk = decode_images(images, DATA_CONFIG, str(cache), "decoding")
    assert not on_disk.in_memory and len(on_disk) == len(images)
    assert all(np.array_equal(in_memory[i], on_disk[i]) for i in range(len(images)))
    folder = cache / "decoded" / config_key(DATA_CONFIG)
    entries = sorted(folder.glob("*/*.npy"))
    assert len(entries) == len(images)
    # a wrong dtype, a wrong shape and a truncated file: named in one warning, decoded again
    np.save(entries[0], np.zeros((32, 40, 3), dtype=np.float32))
    np.save(entries[1], np.zeros((5, 40, 3), dtype=np.uint8))
    entries[2].write_bytes(entries[2].read_bytes()[:200])
    assert all(read_entry(entry, 36)[1] is not None for entry in entries[:3])
    with caplog.at_level("WARNING", logger="golabels"):
        again = decode_images(images, DATA_CONFIG, str(cache), "decoding")
    assert "decoded-image cache: 3 entries damaged" in caplog.text
    assert all(np.array_equal(in_memory[i], again[i]) for i in range(len(images)))
    assert all(read_entry(entry, 36)[1] is None for entry in entries)


def test_workers_give_the_same_weights_and_the_old_path_stays_available(domains, tmp_path):
    source, target = domains
    runs = {}
    for name, extra in (("w0", ["--workers", "0"]), ("w2", ["--workers", "2"]), ("pil", ["--augment", "per-image"])):
        runs[name] = adapt_tiny(source, target, tmp_path / name, "--iters", "6", *extra)
    weights = {name: load_file(str(run / "model.safetensors")) for name, run in runs.items()}
    assert all(torch.equal(weights["w0"][k], weights["w2"][k]) for k in weights["w0"])
    assert any(not torch.equal(weights["w0"][k], weights["pil"][k]) for k in weights["w0"])
    import yaml

    assert yaml.safe_load((runs["w0"] / "config.yaml").read_text())["augment"] == "batched"
    assert yaml.safe_load((runs["pil"] / "config.yaml").read_text())["augment"] == "per-image"


def test_an_unknown_augment_is_one_line(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--augment", "gpu", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "unknown augment 'gpu' — choose one of batched, per-image" in result.stderr
    assert not (tmp_path / "run").exists()


def test_evaluation_from_the_decoded_images_equals_evaluation_from_the_files(domains, tmp_path):
    """Issue 43 item 3: a run's validators and --eval-dir accuracy come from its decoded images,
    cropped and normalized on the device: the same inputs, to the bit, as eval_transform's."""
    from golabels_cli.config import build_config
    from golabels_cli.data import eval_loader, eval_transform
    from golabels_cli.training import build
    from golabels_cli.training.outputs import image_loader

    source, target = domains
    t = build(build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False,
                            "image_size": 32, "device": "cpu", "workers": 0, "batch_size": 4, "iters": 4, "eval_dir": str(target)}))
    images = t.eval_set[0]
    loader, prepare = image_loader(t, images, 8)
    assert prepare is not None  # the --eval-dir folder is the target: every image is decoded already
    from_decoded = torch.cat([prepare(x) for x, _ in loader])
    from_files = torch.cat([x for x, _ in eval_loader(images, eval_transform(t.data_config), 8, 0)])
    assert torch.equal(from_decoded, from_files)
    assert [y for _, ys in loader for y in ys.tolist()] == images.labels
    per_image = build(build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False,
                                    "image_size": 32, "device": "cpu", "workers": 0, "batch_size": 4, "iters": 4, "augment": "per-image"}))
    assert image_loader(per_image, images, 8)[1] is None  # nothing decoded: from the files


@pytest.mark.parametrize("method", ["cdan-e", "cdan-e+mcc", "dann", "bnm"])
def test_a_training_step_reads_nothing_back_to_the_host(domains, method, monkeypatch):
    """Issue 43 item 2: no host synchronisation inside a step (on a GPU, each would stall the queue
    of launches): no tensor is read as a Python number, a bool, a list or an array while the batch
    stage and the step run. Checked on the CPU by counting the Python-level reads."""
    from golabels_cli.config import build_config
    from golabels_cli.training import LoopState, build
    from golabels_cli.training.loop import Window, open_streams

    source, target = domains
    t = build(build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False,
                            "image_size": 32, "device": "cpu", "workers": 0, "batch_size": 4, "iters": 4, "method": method}))
    window = Window.empty(t.device)
    reads = []

    def counting(fn):  # fn, counting the reads made while it runs
        def counted(*a, **k):
            with pytest.MonkeyPatch.context() as patch:
                for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
                    real = getattr(torch.Tensor, name)
                    patch.setattr(torch.Tensor, name,
                                  lambda self, *a, _real=real, _name=name, **k: (reads.append(_name), _real(self, *a, **k))[1])
                return fn(*a, **k)
        return counted

    import golabels_cli.device_batches as stage

    monkeypatch.setattr(stage, "augment", counting(stage.augment))  # the batch stage on the device (the loader's draws are the host's own)
    streams = open_streams(t, LoopState())
    for _ in range(2):
        xs, ys, xt, _ = streams.next()
        logged = counting(streams.step)(xs, ys, xt, 0.5)
        counting(window.add)(logged, len(xs) + len(xt))  # the metrics window: summed on the device
    streams.close()
    assert reads == []


def test_decoded_entries_swapped_are_decoded_again_and_a_folder_in_place_of_one_is_named(domains, tmp_path, monkeypatch, caplog):
    """Issue 54 item 3: an entry is the image its name says (it ends with that image's key), so two
    entries swapped are decoded again instead of training on each other's pixels; a folder where
    an entry goes is named, not blamed on free space or permissions."""
    import golabels_cli.decoded as decoded_module
    from golabels_cli.errors import InputError

    source, _ = domains
    images = scan_labeled(source)
    in_memory = decode_images(images, DATA_CONFIG, None, "decoding")
    monkeypatch.setattr(decoded_module, "free_memory", lambda: 1000)
    cache = tmp_path / "cache"
    decode_images(images, DATA_CONFIG, str(cache), "decoding")
    entries = sorted((cache / "decoded" / config_key(DATA_CONFIG)).glob("*/*.npy"))
    first, second = entries[0].read_bytes(), entries[1].read_bytes()
    entries[0].write_bytes(second)
    entries[1].write_bytes(first)
    assert "not the entry of the image its name says" in read_entry(entries[0], 36)[1]
    with caplog.at_level("WARNING", logger="golabels"):
        again = decode_images(images, DATA_CONFIG, str(cache), "decoding")
    assert "decoded-image cache: 2 entries damaged" in caplog.text
    assert all(np.array_equal(in_memory[i], again[i]) for i in range(len(images)))
    entries[2].unlink()
    entries[2].mkdir()
    with pytest.raises(InputError) as refused:
        decode_images(images, DATA_CONFIG, str(cache), "decoding")
    assert f"the decoded-image cache holds a folder where an entry goes, at {entries[2]}" in refused.value.message
    assert "remove it" in refused.value.hint and "free space" not in refused.value.hint
    args = [*domains, *TINY, "--iters", "1", "--cache-dir", cache]
    assert cli("adapt", *args, "--out", tmp_path / "first").exit_code == 0  # the run's own entries (its data config)
    [folder] = [p for p in (cache / "decoded").iterdir() if p.name != config_key(DATA_CONFIG)]
    entry = sorted(folder.glob("*/*.npy"))[0]
    entry.unlink()
    entry.mkdir()
    result = cli("adapt", *args, "--out", tmp_path / "second")
    assert result.exit_code == 2
    one_error_line(result, f"a folder where an entry goes, at {entry}", "remove it")
    assert not (tmp_path / "second").exists()
