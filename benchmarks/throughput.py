"""Where a golabels adapt step spends its time, as ratios measured side by side in one process.

    (a) adapt step images/s vs. plain supervised training of the same classifier, same images per step
    (b) step time with Go-labels / with fixed domain labels
    (c) training loader images/s (default workers) vs. adapt-step images/s
    (d) full iteration time / --freeze-backbone iteration time (after the feature cache is built)
    (e) with --real-dir: loader images/s with reduced-size JPEG decoding / with full decoding,
        on copies of the folder's photos upscaled to --upscale px (written to a temporary folder)
    (f) golabels' DANN step vs. the same step written the way TLlib's examples write it (dann.py:
        fp32, contiguous NCHW, plain SGD, a host sync per step for its meters), same model and batch;
        target >= 2x on a GPU, where golabels' fast path applies (on a CPU both are the same fp32 step)
    (g) peak memory of an adapt step at --batch + --batch (CUDA), and the largest batch per domain
        that fits: doubled from --batch until out of memory, then bisected (at most --max-batch; no
        new size tried after --g-seconds)
    (h) `golabels predict` images/s on --device vs. on the CPU, with PyTorch and with onnxruntime
        (its CUDA provider where installed), on the photos of --real-dir (or the synthetic images)
    (i) --compile: for each of --compile-modes (default; reduce-overhead, which adds CUDA graphs),
        the first compiled step's seconds (the compilation), then the step time against eager, and
        after how many iterations compiling has paid for itself
    (k) with --freeze-backbone, a step of a recipe without a discriminator (--method mcc) vs. one of
        CDAN+E (golabels' adversarial default), on the same cached-feature batch
    (l) the training loader's CPU milliseconds per image, all in one process (--workers 0), side
        by side on the same images (--real-dir, else the synthetic ones): (i) per-image PIL
        augmentation decoding the files (--augment per-image), (ii) the same from decoded images
        in memory (--cache-images), (iii) decoded images with the batch stage on --device
        (--augment batched, the default); target: (iii) at least 5x fewer than (i)
    (j) JPEG decoding on --device (torchvision.io.decode_jpeg, batched, then the resize to the
        training size) vs. the training loader's images/s with --workers CPU processes: whether
        decoding on the GPU would feed it faster (on a CPU device: decode_jpeg on the CPU)

Steps run on in-memory random inputs, so (a), (b), (d), (f), (g) and (i) measure the model, not the
disk. Each comparison alternates its two variants step by step and reports medians.

    python benchmarks/throughput.py --backbone resnet10t --image-size 64
    python benchmarks/throughput.py --backbone tf_efficientnet_lite0 --image-size 224 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --real-dir /tmp/golabels-data/webcam
    python benchmarks/throughput.py --backbone resnet50 --image-size 224 --device cuda --steps 30   # GPU
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import golabels
from golabels.hooks import (ImageSet, InfiniteDraws, TrainImages, Training, autocast, batch_loader, build, decode_all, decode_for_training,
                            decode_images,
                            device_batches, grad_reverse, image_files, load_rgb, loader_crop, make_two_domains, resize_shorter, scale_size,
                            scan_unlabeled, step_of, train_transform)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def alternate(a, b, device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of a() and of b(), run alternately after `warmup` rounds of each."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(steps):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    return statistics.median(ta), statistics.median(tb)


def make_training(args, folder: Path, **overrides) -> Training:
    values = dict(source=str(folder / "source"), target=str(folder / "target"), backbone=args.backbone, image_size=args.image_size,
                  pretrained=False, weights=args.weights, batch_size=args.batch, device=args.device, workers=0, seed=0,
                  cache_dir=str(folder / "cache"), method="cdan-e", domain_labels="go")
    return build(golabels.config(**{**values, **overrides}))


def adapt_stepper(t: Training, xs, ys, xt, compile_mode: str | None = None):
    if compile_mode is not None:
        forward = torch.compile(t.model, mode=None if compile_mode == "default" else compile_mode)
    else:
        forward = torch.compile(t.model) if t.speed.compile else t.model
    step = step_of(t, forward)
    return lambda: step(xs, ys, xt, 1.0)


def supervised_stepper(t: Training, x, y):
    """The baseline: the same classifier and optimizer, 2B labeled images, cross-entropy only."""

    def step():
        x_, y_ = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        if t.speed.channels_last:
            x_ = x_.contiguous(memory_format=torch.channels_last)
        with autocast(t.device, t.speed.autocast):
            logits, _ = t.model(x_)
            loss = F.cross_entropy(logits.float(), y_)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()

    return step


def reference_stepper(t: Training, xs, ys, xt):
    """DANN as TLlib's examples/domain_adaptation/image_classification/dann.py trains it: one fp32
    forward of the joint batch in NCHW, cross-entropy plus the discriminator's BCE through the
    gradient reversal, torch.optim.SGD without the fused kernel, and `.item()` on the losses and the
    domain accuracy each step (its AverageMeters). The model and discriminator are golabels' own."""
    params = [{"params": t.model.backbone.parameters(), "lr": 0.001},
              {"params": [*t.model.bottleneck.parameters(), *t.model.head.parameters()]},
              {"params": t.disc.parameters()}]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
    domain = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))]).to(t.device)

    def step():
        x = torch.cat([xs, xt]).to(t.device).contiguous()
        y = ys.to(t.device)
        logits, features = t.model(x)
        loss_cls = F.cross_entropy(logits[: len(xs)], y)
        d = t.disc(grad_reverse(features, 1.0))[0].reshape(-1)
        loss_adv = F.binary_cross_entropy_with_logits(d, domain)
        loss = loss_cls + loss_adv
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # the meters: three host syncs
        loss_cls.item(), loss_adv.item(), ((d > 0).float() == domain).float().mean().item()

    return step


class FullDecode(Dataset):
    """decode_for_training without the reduced-size JPEG decoding: the comparison's baseline."""

    def __init__(self, images: ImageSet, transform, data_config: dict):
        self.images, self.transform, self.data_config = images, transform, data_config

    def __len__(self):
        return len(self.images)

    def __getitem__(self, draw):
        side = scale_size(self.data_config)
        img = resize_shorter(load_rgb(self.images.paths[draw.index]), side, self.data_config["interpolation"])
        return self.transform(img), -1


def loader_rate(dataset: Dataset, batch: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, sampler=InfiniteDraws(len(dataset), 0, 0), num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # start the workers
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - started)


def loader_cpu_ms(batches, batch: int, count: int) -> float:
    """CPU milliseconds (every thread of this process) per image over `count` batches, after one."""
    next(batches)
    started = time.process_time()
    for _ in range(count):
        next(batches)
    return (time.process_time() - started) * 1000 / (count * batch)


def loader_figure(images: ImageSet, data_config: dict, device: torch.device, batch: int, count: int) -> tuple[float, float, float]:
    """(l): CPU ms per training image of the three loaders, as the loop would draw them."""
    def per_image(decoded) -> float:
        dataset = TrainImages(images, train_transform(data_config, 0.08, 0.5), data_config, decoded)
        loader = DataLoader(dataset, batch_size=batch, sampler=InfiniteDraws(len(images), 0, 0), drop_last=True)
        return loader_cpu_ms(iter(loader), batch, count)

    from_files = per_image(None)
    from_memory = per_image(decode_all(images, data_config))
    decoded = decode_images(images, data_config, None, "decoding")
    loader = batch_loader(images, decoded, 0.08, 0.5, batch, 0, 0, 0, device.type == "cuda", crop_to=loader_crop(device, data_config))

    def on_device():
        for x, _, _ in device_batches(loader, device, data_config):
            sync(device)  # the batch is ready, as the step would need it
            yield x

    return from_files, from_memory, loader_cpu_ms(on_device(), batch, count)


def largest_batch(fits, start: int, limit: int, seconds: float = float("inf")) -> tuple[int, bool]:
    """(batch, exact): the largest batch in [1, limit] for which fits(batch) holds, assuming it
    holds for every smaller one: doubled from `start` until it fails or reaches `limit`, then
    bisected; 0 if none. No new try starts after `seconds`: then the largest batch known to fit,
    and exact False."""
    deadline = time.monotonic() + seconds
    good = 0  # the largest batch known to fit (0: none yet)
    batch = max(1, min(start, limit))
    while fits(batch):
        good = batch
        if batch == limit:
            return good, True
        if time.monotonic() > deadline:
            return good, False
        batch = min(2 * batch, limit)
    bad = batch  # the smallest known not to
    while bad - good > 1:
        if time.monotonic() > deadline:
            return good, False
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good, True


def step_fits(t: Training, size: int, classes: int):
    """fits(batch) for largest_batch: one adapt step at batch + batch, False when it runs out of memory."""

    def fits(batch: int) -> bool:
        try:
            xs, xt = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
            ys = torch.randint(0, classes, (batch,))
            adapt_stepper(t, xs, ys, xt)()
            sync(t.device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            t.optimizer.zero_grad(set_to_none=True)
            if t.device.type == "cuda":
                torch.cuda.empty_cache()

    return fits


def predict_rate(model: Path, device: str, paths: list[str], batch: int, workers: int) -> tuple[float, str]:
    """Images/s of golabels predict's library path (decode, preprocess, run) over `paths`, and its backend."""
    from golabels.hooks import open_predictor, predict_batches

    predictor = open_predictor(str(model), device)
    list(predict_batches(predictor, paths[:batch], batch, workers))  # warm-up: sessions, kernels
    started = time.perf_counter()
    n = sum(len(b) for b in predict_batches(predictor, paths, batch, workers))
    return n / (time.perf_counter() - started), predictor.backend


def jpeg_folder(folder: Path, real_dir: str | None, count: int = 64) -> list[Path]:
    """JPEG copies of --real-dir's photos (as they are), or of the synthetic source images."""
    out = folder / "jpegs"
    out.mkdir(exist_ok=True)
    sources = image_files(real_dir)[:count] if real_dir else image_files(folder / "source")[:count]
    paths = []
    for i, path in enumerate(sources):
        paths.append(out / f"{i:03d}.jpg")
        load_rgb(path).save(paths[-1], quality=90)
    return paths


def gpu_decode_rate(paths: list[Path], device: torch.device, size: int, batch: int, rounds: int = 5) -> float:
    """Images/s of batched torchvision.io.decode_jpeg on `device` plus the resize of each image to
    size x size: the work the CPU loader does, done on the device."""
    from torchvision.io import decode_jpeg, read_file

    data = [read_file(str(p)) for p in paths]
    batches = [data[i:i + batch] for i in range(0, len(data), batch)]

    def decode_all() -> None:
        for chunk in batches:
            images = decode_jpeg(chunk, device=device)
            torch.stack([F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)[0] for img in images])

    decode_all()  # warm-up: the decoder's handles
    sync(device)
    started = time.perf_counter()
    for _ in range(rounds):
        decode_all()
    sync(device)
    return rounds * len(data) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--weights")
    parser.add_argument("--batch", type=int, default=32, help="images per domain per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 1)))
    parser.add_argument("--real-dir", help="a folder of JPEG photos for (e)")
    parser.add_argument("--upscale", type=int, default=1000, help="shorter side of the (e) copies, px")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of one adapt step")
    parser.add_argument("--figures", default="abcdefghijkl", help="which figures to measure, e.g. 'e' for the decoding one alone")
    parser.add_argument("--max-batch", type=int, default=1024, help="(g): the largest batch per domain tried")
    parser.add_argument("--g-seconds", type=float, default=20.0, help="(g): no new batch size is tried after this many seconds")
    parser.add_argument("--compile-modes", default="default,reduce-overhead",
                        help="(i): torch.compile modes to time against eager (reduce-overhead: with CUDA graphs)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_two_domains(folder, per_class=6, size=args.image_size, seed=0)
        t = make_training(args, folder, compile=args.compile)
        device, B = t.device, args.batch
        gen = torch.Generator().manual_seed(0)
        xs, xt = (torch.randn(B, 3, args.image_size, args.image_size, generator=gen) for _ in range(2))
        ys = torch.randint(0, len(t.source.classes), (B,), generator=gen)
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
        print(f"{args.backbone} at {args.image_size} px, batch {B} + {B}, {name}, torch {torch.__version__}")

        adapt = adapt_stepper(t, xs, ys, xt)
        adapt_rate = None
        if "a" in args.figures:
            supervised = supervised_stepper(t, torch.cat([xs, xt]), torch.cat([ys, ys]))
            t_adapt, t_sup = alternate(adapt, supervised, device, args.steps, args.warmup)
            adapt_rate = 2 * B / t_adapt
            print(f"(a) adapt step {adapt_rate:.1f} img/s, supervised step {2 * B / t_sup:.1f} img/s: ratio {t_sup / t_adapt:.3f} (target "
                  ">= 0.90)")

        if "b" in args.figures:
            fixed = make_training(args, folder, domain_labels="fixed", compile=args.compile)
            t_go, t_fixed = alternate(adapt, adapt_stepper(fixed, xs, ys, xt), device, args.steps, args.warmup)
            print(f"(b) step time go {t_go * 1000:.1f} ms, fixed {t_fixed * 1000:.1f} ms: ratio {t_go / t_fixed:.3f} (target <= 1.02)")
            del fixed

        if "c" in args.figures and adapt_rate:
            source = scan_unlabeled(folder / "source")
            rate = loader_rate(TrainImages(source, train_transform(t.data_config, 0.08, 0.5), t.data_config), B, args.workers, 20)
            print(f"(c) loader {rate:.0f} img/s with {args.workers} workers vs. adapt step {adapt_rate:.1f} img/s: "
                  f"ratio {rate / adapt_rate:.2f} (>= 1: the loader keeps up)")

        if "d" in args.figures:
            frozen = make_training(args, folder, freeze_backbone=True)
            dim = frozen.features["source"].values.shape[1]
            fs, ft = (torch.randn(B, dim, generator=gen) for _ in range(2))
            frozen_step = functools.partial(step_of(frozen), fs, ys, ft, 1.0)
            t_full, t_frozen = alternate(adapt, frozen_step, device, args.steps, args.warmup)
            print(f"(d) full iteration {t_full * 1000:.1f} ms, --freeze-backbone {t_frozen * 1000:.2f} ms: {t_full / t_frozen:.0f}x faster "
                  "(target >= 30x)")

        if "k" in args.figures:
            frozen_mcc = make_training(args, folder, freeze_backbone=True, method="mcc")
            frozen_cdan = make_training(args, folder, freeze_backbone=True, method="cdan-e", domain_labels="fixed")
            dim = frozen_mcc.features["source"].values.shape[1]
            fs, ft = (torch.randn(B, dim, generator=gen) for _ in range(2))
            t_mcc, t_cdan = alternate(functools.partial(step_of(frozen_mcc), fs, ys, ft, 1.0),
                                      functools.partial(step_of(frozen_cdan), fs, ys, ft, 1.0), device, args.steps, args.warmup)
            print(f"(k) --freeze-backbone step: mcc {t_mcc * 1000:.2f} ms (no discriminator), cdan-e {t_cdan * 1000:.2f} ms "
                  f"({len(t.source.classes)} classes): cdan-e / mcc {t_cdan / t_mcc:.1f}x")
            del frozen_mcc, frozen_cdan

        if args.real_dir and "e" in args.figures:
            big = folder / "large"
            big.mkdir()
            for i, path in enumerate(image_files(args.real_dir)[:64]):
                img = load_rgb(path)
                resize_shorter(img, args.upscale, "bicubic").save(big / f"{i:03d}.jpg", quality=90)
            photos = scan_unlabeled(big)
            transform = train_transform(t.data_config, 0.08, 0.5)
            reduced = loader_rate(TrainImages(photos, transform, t.data_config), B, args.workers, 12)
            full = loader_rate(FullDecode(photos, transform, t.data_config), B, args.workers, 12)
            w, h = Image.open(photos.paths[0]).size
            print(f"(e) loader on {len(photos)} {w}x{h} JPEGs: reduced-size decoding {reduced:.0f} img/s, full decoding {full:.0f} img/s: "
                  f"{reduced / full:.2f}x (target >= 3x); decoded sizes {Image.open(photos.paths[0]).size} -> "
                  f"{decode_for_training(photos.paths[0], t.data_config).size} before the crop")

        if "f" in args.figures:
            ours = make_training(args, folder, method="dann", domain_labels="fixed", compile=args.compile)
            reference = make_training(args, folder, method="dann", domain_labels="fixed", device=args.device)
            t_ours, t_ref = alternate(adapt_stepper(ours, xs, ys, xt), reference_stepper(reference, xs, ys, xt), device, args.steps,
                                      args.warmup)
            print(f"(f) golabels' DANN step {2 * B / t_ours:.1f} img/s, TLlib-style step {2 * B / t_ref:.1f} img/s: ratio "
                  f"{t_ref / t_ours:.2f} "
                  f"(target >= 2 on a GPU)")
            del ours, reference

        if "g" in args.figures:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                adapt()
                sync(device)
                peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak at batch {B} + {B}"
            else:
                peak = "peak memory n/a on the CPU"
            fits, exact = largest_batch(step_fits(t, args.image_size, len(t.source.classes)), B, args.max_batch, args.g_seconds)
            limit = (" (the --max-batch tried)" if fits == args.max_batch
                     else "" if exact else f" at least (--g-seconds {args.g_seconds:g} spent)")
            print(f"(g) {peak}; largest batch per domain that fits: {fits}{limit}")

        jpegs = jpeg_folder(folder, args.real_dir) if "h" in args.figures or "j" in args.figures else []
        if "h" in args.figures:
            from golabels.hooks import ModelInfo, save_model

            model_dir = folder / "model"
            model_dir.mkdir()
            save_model(t.model, ModelInfo(args.backbone, t.source.classes, t.data_config, t.cfg.bottleneck_dim, "cdan-e", "fixed"),
                       model_dir / "model.safetensors")
            golabels.export_onnx(model_dir / "model.safetensors", model_dir / "model.onnx", verify=False)
            photos = [str(p) for p in jpegs]
            photos = (photos * (512 // len(photos) + 1))[:512] if device.type == "cuda" else photos
            rates = {}
            for model, dev in ((model_dir / "model.safetensors", args.device), (model_dir / "model.safetensors", "cpu"),
                               (model_dir / "model.onnx", args.device), (model_dir / "model.onnx", "cpu")):
                rate, backend = predict_rate(model, dev, photos, 2 * B, args.workers)
                rates[backend] = rate
            shown = ", ".join(f"{backend} {rate:.0f} img/s" for backend, rate in rates.items())
            print(f"(h) predict on {len(photos)} images, batch {2 * B}, {args.workers} decoding threads: {shown}")

        if "i" in args.figures:
            eager = make_training(args, folder, compile=False)
            eager_step = adapt_stepper(eager, xs, ys, xt)
            for mode in args.compile_modes.split(","):  # a line each, as soon as measured: gpu.sh's cap may end the section
                torch._dynamo.reset()
                compiled = make_training(args, folder)
                compiled_step = adapt_stepper(compiled, xs, ys, xt, compile_mode=mode)
                first = timed(compiled_step, device)
                t_eager, t_compiled = alternate(eager_step, compiled_step, device, args.steps, args.warmup)
                gain = t_eager - t_compiled
                pays = f"pays for itself after {first / gain:.0f} iterations" if gain > 0 else "never pays for itself at this size"
                print(f"(i) --compile, mode {mode}: first step {first:.1f} s (compiling), then {t_compiled * 1000:.1f} ms vs eager "
                      f"{t_eager * 1000:.1f} ms: speedup {t_eager / t_compiled:.2f}x; {pays}", flush=True)
                del compiled
            del eager

        if "j" in args.figures:
            photos = jpegs
            w, h = Image.open(photos[0]).size
            on_device = gpu_decode_rate(photos, device, args.image_size, 2 * B)
            loader = loader_rate(TrainImages(scan_unlabeled(photos[0].parent), train_transform(t.data_config, 0.08, 0.5), t.data_config),
                                 B, args.workers, 12)
            print(f"(j) {len(photos)} {w}x{h} JPEGs: decode_jpeg + resize on {device.type} {on_device:.0f} img/s, the training loader "
                  f"(decode, resize, random crop, flip) {loader:.0f} img/s with {args.workers} workers: ratio {on_device / loader:.2f} "
                  f"(> 1 on a GPU: decoding there could feed it faster)")

        if "l" in args.figures:
            images = scan_unlabeled(args.real_dir) if args.real_dir else scan_unlabeled(folder / "source")
            count = max(2, min(8, len(images) // B))
            files, memory, batched = loader_figure(images, t.data_config, device, B, count)
            print(f"(l) loader CPU ms per image over {count} batches of {B} ({len(images)} images, one process): (i) per-image from the "
                  "files "
                  f"{files:.2f}, (ii) per-image from memory {memory:.2f}, (iii) batched on {device.type} {batched:.2f}: "
                  f"(i)/(iii) {files / batched:.1f}x (target >= 5x)")

        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                adapt()
                sync(device)
            sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=15))
        shutil.rmtree(folder / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
