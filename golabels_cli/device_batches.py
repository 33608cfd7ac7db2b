"""The batch stage at the end of the training data path (the pattern of timm's PrefetchLoader):
batches of uint8 images leave the loader, and the normalization (and on an accelerator the random
resized crop and the flip) run for the whole batch on the device.

The loader's work per image is a lookup and a copy: the image comes decoded (decoded.py), its
crop box and flip are drawn from a generator seeded by its draw number (so batches do not depend
on the number of workers, and a resumed run replays them), and the batch becomes one tensor.

- On an accelerator the batch is padded to one size and `torchvision.ops.roi_align` resamples
  every crop box to the input size in one call (bilinear, with an adaptive number of samples per
  output pixel: a box larger than the output is averaged, not aliased); flipped rows are mirrored.
- On a CPU, where the "device" is the same cores, each crop is resized in the loader with
  PyTorch's vectorized uint8 antialiased bilinear kernel, which measured several times cheaper
  than resampling the padded batch in float (benchmarks/throughput.py, figure l); the flip is
  applied to the uint8 batch.

Either way  x / 255  is then normalized with the data config's mean and std in one multiply-add.

    crop:  area ~ U(min_crop, 1) x image area, aspect ratio ~ logU(3/4, 4/3), position uniform;
           ten tries, then the largest centered box of ratio within [3/4, 4/3]
           (torchvision's RandomResizedCrop.get_params, drawn from the draw's own generator)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align

from .data import Draw, ImageSet, ignore_interrupts, train_sampler
from .decoded import DecodedImages

RATIO = (3 / 4, 4 / 3)


def crop_box(height: int, width: int, seed: int, min_crop: float, hflip: float) -> tuple[tuple[float, float, float, float], bool]:
    """((x1, y1, x2, y2), flip) of one draw: the crop in the image's pixel coordinates and whether to mirror it."""
    rng = random.Random(seed)
    area = height * width
    log_low, log_high = math.log(RATIO[0]), math.log(RATIO[1])
    box = None
    for _ in range(10):
        target = area * rng.uniform(min_crop, 1.0)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            box = (left, top, left + w, top + h)
            break
    if box is None:
        ratio = width / height
        if ratio < RATIO[0]:
            w, h = width, round(width / RATIO[0])
        else:
            w, h = (round(height * RATIO[1]), height) if ratio > RATIO[1] else (width, height)
        w, h = min(w, width), min(h, height)
        top, left = (height - h) // 2, (width - w) // 2
        box = (left, top, left + w, top + h)
    flip = hflip > 0 and rng.random() < hflip
    return tuple(float(v) for v in box), flip


class DecodedDraws(Dataset):
    """A draw's decoded image (a uint8 HWC numpy array), its crop box, its flip, its label and its index."""

    def __init__(self, images: ImageSet, decoded: DecodedImages, min_crop: float, hflip: float):
        self.images, self.decoded, self.min_crop, self.hflip = images, decoded, min_crop, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, draw: Draw):
        array = self.decoded[draw.index]
        box, flip = crop_box(array.shape[0], array.shape[1], draw.seed, self.min_crop, self.hflip)
        label = self.images.labels[draw.index] if self.images.labels is not None else -1
        return array, box, flip, label, draw.index


@dataclass
class UintBatch:
    """A batch as the loader hands it over. For a CPU device the loader has already cropped,
    resized and flipped each image (`boxes` None): pixels [B, 3, h, w]. For an accelerator the
    images are padded at the bottom and right to one size, pixels [B, H, W, 3], for the device to crop."""

    pixels: torch.Tensor  # uint8
    boxes: torch.Tensor | None  # [B, 4] float32, (x1, y1, x2, y2) in each image's own pixels
    flips: torch.Tensor  # [B] bool
    labels: torch.Tensor  # [B] int64, -1 for the target
    indices: torch.Tensor  # [B] int64: which image of the set each row is

    def pin_memory(self) -> "UintBatch":
        return UintBatch(self.pixels.pin_memory(), None if self.boxes is None else self.boxes.pin_memory(), self.flips.pin_memory(),
                         self.labels.pin_memory(), self.indices)


def _flips_labels_indices(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor([flip for _, _, flip, _, _ in items], dtype=torch.bool), torch.tensor([label for *_, label, _ in items]),
            torch.tensor([index for *_, index in items]))


def collate_padded(items: list) -> UintBatch:
    """The draws' images padded to one tensor, for the device to crop (accelerators)."""
    height = max(a.shape[0] for a, *_ in items)
    width = max(a.shape[1] for a, *_ in items)
    pixels = torch.zeros((len(items), height, width, 3), dtype=torch.uint8)
    view = pixels.numpy()  # decoded arrays are read-only: copied with numpy, never wrapped as tensors
    for i, (array, *_) in enumerate(items):
        view[i, : array.shape[0], : array.shape[1]] = array
    return UintBatch(pixels, torch.tensor([box for _, box, _, _, _ in items], dtype=torch.float32), *_flips_labels_indices(items))


class CollateCrops:
    """The draws' crops resized to `size` and flipped in the loader (a CPU device): uint8 in and
    out, through PyTorch's vectorized uint8 antialiased bilinear kernel, several times cheaper on
    a CPU than resampling the padded batch in float (benchmarks/throughput.py, figure l)."""

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, items: list) -> UintBatch:
        pixels = torch.empty((len(items), 3, *self.size), dtype=torch.uint8)
        for i, (array, box, flip, *_) in enumerate(items):
            x1, y1, x2, y2 = (int(v) for v in box)
            crop = torch.from_numpy(array[y1:y2, x1:x2]).permute(2, 0, 1)[None]  # HWC: channels-last, as the uint8 kernel takes it
            resized = F.interpolate(crop, size=self.size, mode="bilinear", antialias=True, align_corners=False)[0]
            pixels[i] = resized.flip(-1) if flip else resized
        return UintBatch(pixels, None, *_flips_labels_indices(items))


def augment(batch: UintBatch, device: torch.device, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor,
            channels_last: bool = False, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [B, 3, h, w] float32 normalized, labels) on `device`: each crop box resampled to
    `size` and flipped where drawn (unless the loader did). `mean` and `std` are [3] tensors on the
    device; `out`, a float32 tensor of the batch's shape to write into (saves an allocation)."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    pixels = batch.pixels.to(device, non_blocking=True)
    if batch.boxes is None:
        x = out.copy_(pixels) if out is not None and out.shape == pixels.shape else pixels.float()
    else:
        boxes = batch.boxes.to(device, non_blocking=True)
        flips = batch.flips.to(device, non_blocking=True)
        x = pixels.permute(0, 3, 1, 2).float().contiguous(memory_format=memory)
        rois = torch.cat([torch.arange(len(boxes), device=device, dtype=boxes.dtype)[:, None], boxes], dim=1)
        x = roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    x = x.contiguous(memory_format=memory)
    x = x.mul_((1.0 / (255.0 * std)).view(1, 3, 1, 1)).sub_((mean / std).view(1, 3, 1, 1))
    return x, batch.labels.to(device, non_blocking=True)


def batch_loader(images: ImageSet, decoded: DecodedImages, min_crop: float, hflip: float, batch_size: int, seed: int, stream: int,
                 workers: int, pin: bool, start: int = 0, rank: int = 0, world: int = 1, balance_by: list[int] | None = None,
                 crop_to: tuple[int, int] | None = None) -> DataLoader:
    """UintBatch of `batch_size` draws from train_sampler, starting at this rank's draw `start`;
    cropped and resized to `crop_to` in the loader when given (a CPU device), else padded."""
    return DataLoader(
        DecodedDraws(images, decoded, min_crop, hflip),
        batch_size=batch_size,
        sampler=train_sampler(images, seed, stream, start, rank, world, balance_by),
        num_workers=workers,
        collate_fn=CollateCrops(crop_to) if crop_to else collate_padded,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_interrupts if workers > 0 else None,
    )


def loader_crop(device: torch.device, data_config: dict) -> tuple[int, int] | None:
    """The size the loader crops to itself (a CPU device: its uint8 kernel is the fastest there),
    or None: the accelerator crops the padded batch in one roi_align."""
    return tuple(data_config["input_size"][-2:]) if device.type == "cpu" else None


def device_batches(loader: DataLoader, device: torch.device, data_config: dict,
                   channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The loader's batches augmented on `device`, as (images, labels, the images' indices in
    their set; on the host). On an accelerator one ahead: the next batch's
    copy and crop are queued before the current one is handed to the step. On a CPU into two
    alternating buffers: a fresh 19 MB batch each step costs more in page faults than the
    normalization itself (a step's batch is no longer read once the next one is asked for)."""
    size = tuple(data_config["input_size"][-2:])
    mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=device)
    std = torch.tensor(data_config["std"], dtype=torch.float32, device=device)
    batches = iter(loader)
    if device.type == "cpu":
        buffers: list[torch.Tensor | None] = [None, None]
        for step, batch in enumerate(batches):
            x, y = augment(batch, device, size, mean, std, channels_last, buffers[step % 2])
            buffers[step % 2] = x
            yield x, y, batch.indices
        return
    batch = next(batches)
    ready = (*augment(batch, device, size, mean, std, channels_last), batch.indices)
    while True:
        batch = next(batches)
        upcoming = (*augment(batch, device, size, mean, std, channels_last), batch.indices)
        yield ready
        ready = upcoming


class DecodedCenterCrops(Dataset):
    """Evaluation's input from decoded images: the center crop of each, uint8 CHW. The decoded
    image is eval's resize (decoded.py), so with a square input and timm's center crop this is
    eval_transform's crop pixel for pixel; normalize_like_eval makes the rest bit-identical."""

    def __init__(self, sources: list[tuple[DecodedImages, int]], labels: list[int] | None, size: tuple[int, int]):
        self.sources, self.labels, self.size = sources, labels, size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        decoded, j = self.sources[i]
        array = decoded[j]
        height, width = self.size
        top, left = int(round((array.shape[0] - height) / 2.0)), int(round((array.shape[1] - width) / 2.0))  # as images.resize_and_crop
        crop = np.ascontiguousarray(array[top:top + height, left:left + width].transpose(2, 0, 1))
        return torch.from_numpy(crop), self.labels[i] if self.labels is not None else -1


def center_crops_fit(data_config: dict) -> bool:
    """Whether a center crop of the decoded images is eval's crop exactly: a square input, timm's
    center crop mode, and a scale size that covers the input (crop_pct <= 1)."""
    _, height, width = data_config["input_size"]
    return height == width and (data_config.get("crop_mode") or "center") == "center" and (data_config.get("crop_pct") or 0.875) <= 1.0


def normalize_like_eval(data_config: dict, device: torch.device):
    """x (uint8 [B, 3, h, w] on the device) -> (x / 255 - mean) / std in float32, the operations of
    images.to_array in its order: the same values it computes."""
    mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0).sub_(mean).div_(std)

    return prepare
