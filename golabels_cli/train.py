"""adapt() and resume(): the whole training run, top to bottom.

Each step draws `batch_size` labeled source images and `batch_size` unlabeled target images,
runs them through the classifier in one forward pass (so BatchNorm sees both domains), and
minimizes  L = CE(source logits, source labels) + trade_off * L_adv  where L_adv is the method's
discriminator loss (see `methods`) with the chosen domain targets (see `domain_labels`).

Nothing is lost on the way: every `save_every` iterations, on Ctrl-C / SIGTERM (after the step in
progress) and at the end, the whole training state goes to checkpoint.pt atomically — weights,
optimizer, RNG states, sampler positions, metrics so far — and `resume()` continues from it to
the same final weights, bit for bit on the CPU. A non-finite loss stops the run before anything
broken is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import check_run_dir, claim_run_dir, load_checkpoint, remove_stale_temporaries, save_model, torch_save_atomic, write_text_atomic
from .config import AdaptConfig, build_config, resolve_balancing, to_yaml
from .distributed import SINGLE, Dist, all_mean, all_min, any_rank, env_rank, from_rank_0, lr_factor, setup, teardown
from .data import (IMBALANCE_WARNING, ImageSet, class_counts, data_report, decode_all, eval_loader, eval_transform, imbalance_ratio,
                   sample_indices, scan_labeled, scan_unlabeled, stratified_split, train_loader, train_sampler, train_transform)
from .console import remedy_flags, remedy_hint
from .errors import InputError, Interrupted, RunError, reason
from .evaluate import autocast, labeled_for_model, predict_outputs, score
from .features import Features, backbone_features, model_key
from .label_shift import SHIFT_P_VALUE, SHIFT_WARNING, bbse_prior, class_weights, em_prior, moving_average, shift_p_value, total_variation
from .methods import CONDITIONED, MethodParams, MultilinearMap, adversarial_loss, discriminator_input_dim, grl_coeff
from .model_info import ModelInfo
from .models import Classifier, check_backbone_name, create_backbone, discriminator, resolve_data_config
from .progress import batch_size as batch_size_of
from .progress import tracked
from .trackers import Tracker
from .validators import Outputs, better, compute_validators, metric_key

log = logging.getLogger("golabels")

Progress = Callable[[str, dict[str, Any]], None]
LOSS_KEYS = ("loss_cls", "loss_adv", "loss_extra")  # loss_extra: GVB's bridge penalties, ASAN's spectral loss
# adv_grad_norm: the norm of the adversarial gradient reaching the features (after --trade-off and
# the reversal coefficient): what Go-labels' relabeling takes away, next to the fractions relabeled.
STAT_KEYS = (*LOSS_KEYS, "disc_acc", "disc_acc_src", "disc_acc_tgt", "relabeled_src", "relabeled_tgt", "adv_grad_norm")
CHECKPOINT_FORMAT = "golabels-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


def pick_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda", "mps"):
        raise InputError(f"unknown --device {name!r}", "choose one of auto, cpu, cuda, mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but Apple MPS is not available", "use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a step may use, in types torch.load(weights_only=True) accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def _set_lr(optimizer: torch.optim.Optimizer, cfg: AdaptConfig, step: int, scale: float) -> float:
    factor = (1.0 + cfg.resolved_lr_gamma() * step) ** (-cfg.lr_decay)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return cfg.lr * scale * factor


def _nothing(kind: str, data: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class Speed:
    """How a run uses the hardware. On CUDA everything that makes it faster; elsewhere nothing,
    so CPU results stay bit-exact and reproducible."""

    autocast: torch.dtype | None = None  # mixed precision (--precision); None: fp32
    loss_scaling: bool = False  # fp16: gradients scaled so that small ones do not underflow
    channels_last: bool = False
    fused_optimizer: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def speed_settings(device: torch.device, cfg: AdaptConfig) -> Speed:
    cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    return Speed(
        autocast=PRECISION_DTYPES[precision],
        loss_scaling=precision == "fp16",
        channels_last=cuda and not cfg.freeze_backbone,
        fused_optimizer=cuda,
        pin_memory=cuda,
        cudnn_benchmark=cuda and not cfg.deterministic,
        compile=cfg.compile,
    )


# ---- what a run is made of --------------------------------------------------------------------


@dataclass
class Training:
    """Everything built from a config before anything is written: inputs checked, model made."""

    cfg: AdaptConfig
    device: torch.device
    source: ImageSet  # the training split of the source folder
    target: ImageSet
    eval_set: tuple[ImageSet, list[int]] | None
    validation: "Validation"
    report: dict[str, Any]  # data_report() of the folders
    data_config: dict
    model: Classifier
    disc: torch.nn.Module
    multilinear: MultilinearMap | None
    optimizer: torch.optim.Optimizer
    speed: Speed
    method_params: MethodParams
    dist: Dist = SINGLE
    features: dict[str, Features] | None = None  # --freeze-backbone: "source", "target", "eval", "source_val"
    decoded: dict[str, list[np.ndarray] | None] | None = None  # --cache-images: "source", "target"
    selected_weights: dict[str, torch.Tensor] | None = None  # --select: the best snapshot's model state so far
    grad_scaler: torch.amp.GradScaler | None = None  # --precision fp16

    @property
    def adversarial(self) -> bool:
        return self.cfg.method != "source-only"

    @property
    def lr_scale(self) -> float:
        return lr_factor(self.cfg.lr_scaling, self.dist.world)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Which images, in which order: a resumed run replays the same draws only on the same lists."""
        h = hashlib.sha256()
        for images in (self.source, self.target):
            for path in images.paths:
                h.update(str(path.relative_to(images.root)).encode("utf-8", "surrogateescape") + b"\0")
            h.update(b"\1")
        return h.hexdigest()


@dataclass
class Validation:
    """What the validators look at: the held-out source split, a fixed sample of the target, and
    a sample of the training source (DEV's domain classifier), as indices into source/target."""

    source_val: ImageSet | None
    target_sample: list[int]
    train_sample: list[int]


@dataclass
class LoopState:
    """Where the loop is: saved in every checkpoint so a resumed run writes the same metrics."""

    iteration: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # of the metrics window in progress
    window: int = 0
    last_row: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)  # validators (and target_acc) per evaluated snapshot
    selected: dict[str, Any] = field(default_factory=dict)  # {"iter", "value"} of the snapshot --select keeps
    # --balance-target / --label-shift-weights: the newest estimate from the target's predictions
    pseudo_labels: torch.Tensor | None = None  # of every target training image
    class_weights: list[float] | None = None  # of the source classes
    target_estimate: dict[str, Any] = field(default_factory=dict)  # {"iter", "target_prior", "pseudo_label_counts"}
    seconds: float = 0.0  # training time of earlier sessions of this run


def resolve_config(cfg: AdaptConfig) -> AdaptConfig:
    """cfg as the run will write it to config.yaml: the defaults that depend on the source folder
    (the balancing of an imbalanced one) resolved. Scans the source folder; trains nothing."""
    resolve_balancing(cfg, imbalance_ratio(class_counts(scan_labeled(cfg.source, "source"))) > IMBALANCE_WARNING)
    return cfg


def build(cfg: AdaptConfig, d: Dist = SINGLE, progress: Progress = _nothing) -> Training:
    """Check every input and build the model and optimizer; nothing is written. The data report
    goes to `progress` ("data") as soon as the folders are read, before any slow step."""
    device = pick_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if cfg.sync_bn and d.enabled and device.type != "cuda":
        raise InputError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm synchronizes GPU tensors only", "leave --sync-bn out on the CPU")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise InputError(f"--precision fp16 needs a CUDA GPU, and this run is on {device.type}", "use --precision bf16 or fp32")
    check_backbone_name(cfg.backbone)
    scanned = scan_labeled(cfg.source, "source")
    if len(scanned.classes) < 2:
        raise InputError(f"source folder {cfg.source} has only one class ({scanned.classes[0]!r})", "a classifier needs at least two class folders")
    target = scan_unlabeled(cfg.target, "target")
    eval_set = labeled_for_model(cfg.eval_dir, scanned.classes, "eval") if cfg.eval_dir else None
    train_idx, val_idx = stratified_split(scanned.labels, cfg.val_split, cfg.seed)
    by_default = resolve_balancing(cfg, imbalance_ratio(class_counts(scanned)) > IMBALANCE_WARNING)
    report = data_report(scanned, target, val_idx, remedy_hint(remedy_flags(cfg), by_default))
    for warning in report["warnings"]:
        log.warning(warning)
    progress("data", {"data": report, "held_out": len(val_idx)})
    source = scanned.subset(train_idx, keep_skipped=True)
    if cfg.select in ("src-acc", "dev") and len(val_idx) < 2:
        raise InputError(f"--select {cfg.select} needs held-out source images, and --val-split {cfg.val_split} holds out {len(val_idx)}",
                         "raise --val-split, or select by another validator")
    for role, images in (("source", source), ("target", target)):
        if len(images) < d.world:
            raise InputError(f"the {role} folder's {len(images)} images cannot be shared by {d.world} processes", "use fewer --devices")
    validation = Validation(
        scanned.subset(val_idx) if val_idx else None,
        sample_indices(len(target), cfg.val_target_images, cfg.seed, 2),
        sample_indices(len(source), min(len(val_idx), cfg.val_target_images or len(val_idx)), cfg.seed, 3) if val_idx else [],
    )

    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.weights)
    data_config = resolve_data_config(backbone, cfg.image_size)
    model = Classifier(backbone, len(source.classes), cfg.bottleneck_dim, bridged=cfg.method == "gvb")
    model.backbone_bn_frozen = cfg.freeze_bn
    if cfg.sync_bn and d.enabled:
        # Same parameters and state-dict keys: checkpoints load into a plain BatchNorm model.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    disc_in = discriminator_input_dim(cfg.method, cfg.bottleneck_dim, len(source.classes), cfg.cdan_map)
    disc = discriminator(disc_in, cfg.disc_hidden, cfg.method, cfg.discriminator).to(device)
    multilinear = None
    if cfg.method in CONDITIONED:
        multilinear = MultilinearMap(cfg.bottleneck_dim, len(source.classes), torch.Generator().manual_seed(cfg.seed), cfg.cdan_map).to(device)

    speed = speed_settings(device, cfg)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    torch.backends.cudnn.deterministic = cfg.deterministic

    # Pretrained features move slowly (TLlib's recipe); features learned from scratch need the full rate.
    backbone_mult = cfg.backbone_lr_mult if (cfg.pretrained or cfg.weights) else 1.0
    groups = [{"params": list(model.bottleneck.parameters()) + list(model.head.parameters()), "initial_lr": cfg.lr}]
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
        if not (cfg.pretrained or cfg.weights):
            log.warning("--freeze-backbone with a randomly initialized backbone: its features are random; pass --weights or --pretrained")
    else:
        groups.insert(0, {"params": list(model.backbone.parameters()), "initial_lr": cfg.lr * backbone_mult})
    if cfg.method != "source-only":
        groups.append({"params": list(disc.parameters()), "initial_lr": cfg.lr})
    for g in groups:
        g["base_lr"] = g["initial_lr"]  # before --lr-scaling: a run resumed on another process count rescales it
        g["initial_lr"] *= lr_factor(cfg.lr_scaling, d.world)
        g["lr"] = g["initial_lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                                **({"fused": True} if speed.fused_optimizer else {}))
    params = MethodParams(cfg.bridge_g_weight, cfg.bridge_d_weight, cfg.rsl_weight, cfg.rsl_k)
    t = Training(cfg, device, source, target, eval_set, validation, report, data_config, model, disc, multilinear, optimizer, speed, params, d)
    if speed.loss_scaling:
        t.grad_scaler = torch.amp.GradScaler(device.type)
    workers = cfg.resolved_workers()
    if cfg.freeze_backbone:
        key = model_key(cfg.backbone, model.backbone, data_config)
        sets = {"source": source, **({"source_val": validation.source_val} if validation.source_val else {}), "target": target,
                **({"eval": eval_set[0]} if eval_set else {})}
        t.features = {role: backbone_features(images, model.backbone, key, data_config, device, cfg.cache_dir, 2 * cfg.batch_size, workers,
                                              f"features: {ROLE_NAMES[role]}")
                      for role, images in sets.items()}
    elif cfg.cache_images:
        t.decoded = {"source": decode_all(source, data_config), "target": decode_all(target, data_config) if t.adversarial else None}
    return t


# ---- the two entry points ---------------------------------------------------------------------


def adapt(cfg: AdaptConfig, out: str | Path | None = None, exist_ok: bool = False, progress: Progress = _nothing) -> dict[str, Any]:
    """Train on cfg.source (labeled) and cfg.target (unlabeled); returns the summary.

    Every input is checked before the run directory is created, so bad input leaves nothing behind.
    """
    if env_rank() == 0:
        check_run_dir(out, exist_ok)
    d = setup(pick_device(cfg.device).type)
    try:
        t = _shared(build, cfg, d, progress if d.main else _nothing)
        run_dir = None
        if d.main:  # only rank 0 writes
            run_dir = claim_run_dir(out, exist_ok)
            _write(run_dir / "config.yaml", to_yaml(cfg), None)
            _write(run_dir / "metrics.jsonl", "", None)
        return _train(t, run_dir, LoopState(), progress)
    finally:
        teardown()


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, progress: Progress = _nothing) -> dict[str, Any]:
    """Continue an interrupted run from its checkpoint.pt to its configured iteration count."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist", "pass the folder of the interrupted run")
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} holds no {CHECKPOINT_FILE}", "the run stopped before its first save; start it again")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a golabels training checkpoint", "pass the run directory of a golabels adapt run")
    try:
        # Runs saved before --val-split existed trained on the whole source folder, before the
        # balancing options existed on the folders as they are, and before --schedule,
        # --discriminator and --cdan-map with the scaled schedule, BatchNorm discriminators and
        # CDAN's map randomized above 4096 dimensions (whose buffers their checkpoint holds).
        old = {"val_split": 0.0, "balance_source": False, "balance_target": False, "schedule": "scaled", "discriminator": "batchnorm",
               "bn_stats": "train", "freeze_bn": False, "head_start": 0,
               "cdan_map": "randomized" if "rf" in (ckpt.get("multilinear") or {}) else "full"}
        cfg = build_config({**old, **ckpt["config"], **(overrides or {})})
        done = int(ckpt["loop"]["iteration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({reason(exc)})", "start the run again") from exc
    if done >= cfg.iters and (run_dir / "model.safetensors").is_file() and (run_dir / "summary.json").is_file():
        raise InputError(f"run {run_dir} is already complete ({done} of {cfg.iters} iterations)", "evaluate or export it, or start a new run")
    # (done == iters without the model: the final writes failed, and resuming makes them again.)
    d = setup(pick_device(cfg.device).type)
    try:
        return _resume(_shared(build, cfg, d, progress if d.main else _nothing), run_dir, ckpt, path, progress)
    finally:
        teardown()


def _shared_error(exc: Exception) -> Exception:
    exc.shared = True
    return exc


def _shared(fn: Callable, *args):
    """Errors every rank meets alike (the same inputs, the same checks): rank 0 reports them."""
    try:
        return fn(*args)
    except InputError as exc:
        exc.shared = True
        raise


def _resume(t: Training, run_dir: Path, ckpt: dict[str, Any], path: Path, progress: Progress) -> dict[str, Any]:
    if t.source.classes != ckpt["classes"]:
        raise InputError(f"the source folder's classes changed since {run_dir} started", "restore the folder, or start a new run")
    if t.fingerprint != ckpt["fingerprint"]:
        log.warning("the source or target images changed since the run started: resuming anyway, "
                    "but the result will differ from an uninterrupted run")
    try:
        t.model.load_state_dict(ckpt["model"])
        t.disc.load_state_dict(ckpt["discriminator"])
        if t.multilinear is not None:
            t.multilinear.load_state_dict(ckpt["multilinear"])
        built = [group["base_lr"] for group in t.optimizer.param_groups]
        t.optimizer.load_state_dict(ckpt["optimizer"])
        for group, base_lr in zip(t.optimizer.param_groups, built):
            # checkpoints written before golabels stored base_lr: the config gives the same value
            group.setdefault("base_lr", base_lr)
            group["initial_lr"] = group["base_lr"] * t.lr_scale
        t.selected_weights = ckpt.get("selected_model") or None
        if t.grad_scaler is not None and ckpt.get("grad_scaler"):
            t.grad_scaler.load_state_dict(ckpt["grad_scaler"])
        state = LoopState(**ckpt["loop"])
        if state.pseudo_labels is not None and len(state.pseudo_labels) != len(t.target):
            state.pseudo_labels = None  # of another target folder: --balance-target draws uniformly until the next estimate
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} does not fit the run's own config ({reason(exc)})", "it is damaged; start the run again") from exc
    if not t.dist.main:
        return _train(t, None, state, _nothing, rng=ckpt["rng"])
    remove_stale_temporaries(run_dir)
    _truncate_metrics(run_dir / "metrics.jsonl", state.iteration)
    return _train(t, run_dir, state, progress, rng=ckpt["rng"])


# ---- the loop ---------------------------------------------------------------------------------


def _train(t: Training, run_dir: Path | None, state: LoopState, progress: Progress, rng: dict | None = None) -> dict[str, Any]:
    """The loop. With several processes every rank runs it on its own batches; only rank 0
    (run_dir not None) evaluates and writes."""
    cfg, device, speed, d = t.cfg, t.device, t.speed, t.dist
    main = d.main
    workers = cfg.resolved_workers()
    start = state.iteration
    # Each step takes batch_size draws per domain: the samplers start where the run left them.
    if t.features is not None:
        def batches(images: ImageSet, stream: int, first_step: int, balance_by: list[int] | None):
            role, labels = ("source", torch.tensor(images.labels)) if stream == 0 else ("target", None)
            return feature_batches(t.features[role].values, labels, cfg.batch_size,
                                   train_sampler(images, cfg.seed, stream, first_step * cfg.batch_size, d.rank, d.world, balance_by))

        trained: torch.nn.Module = _Classify(t.model)
    else:
        transform = train_transform(t.data_config, cfg.min_crop, cfg.hflip)
        decoded = t.decoded or {}

        def batches(images: ImageSet, stream: int, first_step: int, balance_by: list[int] | None):
            return iter(train_loader(images, transform, t.data_config, cfg.batch_size, cfg.seed, stream, workers, speed.pin_memory,
                                     first_step * cfg.batch_size, decoded.get("source" if stream == 0 else "target"), d.rank, d.world,
                                     balance_by))

        trained = t.model

    if start == 0 and cfg.head_start:
        fit_head(t, workers)

    def target_balance() -> list[int] | None:
        return state.pseudo_labels.tolist() if cfg.balance_target and state.pseudo_labels is not None else None

    source_batches = batches(t.source, 0, start, t.source.labels if cfg.balance_source else None)
    target_batches = batches(t.target, 1, start, target_balance()) if t.adversarial else None
    source_class_weights = torch.tensor(state.class_weights, device=device) if cfg.label_shift_weights and state.class_weights else None
    disc = t.disc
    if d.enabled:
        # DDP averages the gradients over ranks in backward; the modules it wraps stay the ones saved.
        ids = [device.index] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(trained, device_ids=ids)
        if t.adversarial:
            disc = torch.nn.parallel.DistributedDataParallel(t.disc, device_ids=ids)
    forward = torch.compile(trained) if speed.compile and t.features is None else trained
    if rng is not None:
        set_rng_state(rng, device)  # after the loaders: creating one draws from the global generator

    progress("start", {
        "run_dir": str(run_dir), "iters": cfg.iters, "start": start, "device": str(device), "classes": t.source.classes,
        "data": t.report, "held_out": len(t.validation.source_val or []), "world": d.world,
    })
    saved_at = start if start else None  # iteration of the newest checkpoint on disk

    def save(iteration: int) -> None:
        nonlocal saved_at
        window_sums, window_samples = sums, samples
        if iteration < cfg.iters:
            # The window in progress, as every rank's mean: each rank resumes from it (collective:
            # every rank saves at the same iterations; the final save is rank 0's alone).
            window_sums, window_samples = window_means()
        if not main:
            saved_at = iteration
            return
        state.iteration = iteration
        state.sums = {**{k: float(v) for k, v in window_sums.items()}, "samples": float(window_samples)}
        state.window = window
        state.seconds = seconds_before + time.perf_counter() - started
        _save(_checkpoint(t, state), run_dir / CHECKPOINT_FILE, saved_at, run_dir)
        saved_at = iteration

    def window_means() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The metrics window's sums and image count as means over ranks, in one all-reduce."""
        if not d.enabled:
            return sums, samples
        reduced = all_mean(d, torch.stack([*(sums[k] for k in STAT_KEYS), samples]))
        return dict(zip(STAT_KEYS, reduced[:-1])), reduced[-1]

    def check_finite(iteration: int) -> None:
        nonlocal first_bad
        first_bad = all_min(d, first_bad)  # every rank stops at the same iteration
        first = float(first_bad.min())
        if math.isfinite(first):
            names = [k for k, v in zip(LOSS_KEYS, first_bad.tolist()) if v == first]
            values = {k: float(sums[k]) / max(window, 1) for k in names}
            kept = f"the checkpoint of iteration {saved_at} is kept in {run_dir}" if saved_at else "nothing was saved"
            raise _shared_error(RunError(
                f"training diverged at iteration {int(first)}: {', '.join(f'{k} = {v}' for k, v in values.items())}; {kept}",
                "lower --lr or --trade-off and start a new run",
            ))

    domain = torch.cat([torch.ones(cfg.batch_size), torch.zeros(cfg.batch_size)]).to(device)
    sums = {k: torch.tensor(state.sums.get(k, 0.0), device=device) for k in STAT_KEYS}
    window = state.window
    samples = torch.tensor(float(state.sums.get("samples", 0.0)), device=device)  # images this rank trained on since the last row
    # The first iteration at which each loss was not finite (inf: not yet), tracked on the device so
    # that checking it costs a host sync only when a row is logged or a checkpoint written.
    first_bad = torch.full((len(LOSS_KEYS),), math.inf, device=device)
    t.model.train()
    t.disc.train()
    seconds_before, started = state.seconds, time.perf_counter()
    metrics = _open_metrics(run_dir / "metrics.jsonl") if main else None
    tracker = Tracker(cfg.logger if main else None, run_dir, dataclasses.asdict(cfg), start)
    completed = False
    try:
        with _stop_requests() as stop:
            for step in range(start, cfg.iters):
                it = step + 1
                if (cfg.balance_target or cfg.label_shift_weights) and step and step % cfg.refresh_every == 0:
                    _estimate_target(t, state, step, workers)
                    if cfg.balance_target:
                        target_batches = batches(t.target, 1, step, target_balance())
                    if cfg.label_shift_weights:
                        source_class_weights = torch.tensor(state.class_weights, device=device)
                lr = _set_lr(t.optimizer, cfg, step, t.lr_scale)
                coeff = grl_coeff(step, cfg.grl_horizon(), cfg.grl_alpha)
                xs, ys = next(source_batches)
                xt = next(target_batches)[0] if t.adversarial else None
                loss_cls, loss_adv, loss_extra, stats = train_step(t, forward, disc, xs, ys, xt, domain, coeff, source_class_weights)
                samples += len(xs) + (len(xt) if xt is not None else 0)

                losses = torch.stack([loss_cls, loss_adv, loss_extra]).float()
                first_bad = torch.minimum(first_bad, torch.where(torch.isfinite(losses), math.inf, float(it)))
                for k, v in zip(LOSS_KEYS, losses):
                    sums[k] += v
                for k, v in stats.items():
                    sums[k] += v
                window += 1
                progress("step", {"iter": it})

                do_eval = it == cfg.iters or bool(cfg.eval_every and it % cfg.eval_every == 0)
                if it % cfg.log_every == 0 or it == cfg.iters or do_eval:
                    check_finite(it)
                    sums, mean_samples = window_means()  # the row is the mean over ranks
                    row = _metrics_row(t, it, lr, coeff, sums, window)
                    # every rank's images: the proof that all of them trained
                    row["samples_per_step"] = round(float(mean_samples) * d.world / window, 3)
                    if do_eval and main:
                        scores = _validate(t, state, workers)
                        row.update({k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()})
                        state.evals.append({"iter": it, **scores})
                        _warn_on_label_shift(t, state, it, scores)
                        _keep_if_selected(t, state, it, scores)
                    if main:
                        _append(metrics, row, run_dir)
                        tracker.log_row(row)
                    progress("log", row)
                    state.last_row = row
                    sums = {k: torch.zeros((), device=device) for k in STAT_KEYS}
                    window = 0
                    samples = torch.zeros((), device=device)
                # With several ranks, all of them stop at the step where any was asked to.
                stopping = any_rank(d, bool(stop)) if d.enabled else bool(stop)
                if it < cfg.iters and ((cfg.save_every and it % cfg.save_every == 0) or stopping):
                    check_finite(it)
                    save(it)
                    if stopping:
                        raise Interrupted(
                            f"{stop[0] if stop else 'interrupted'} at iteration {it} of {cfg.iters}; "
                            f"the training state is saved in {(run_dir or Path('RUN')) / CHECKPOINT_FILE}",
                            f"resume with: golabels adapt --resume {run_dir}",
                        )
            check_finite(cfg.iters)
        completed = True
    except (Interrupted, RunError):
        raise
    except KeyboardInterrupt:
        # A second Ctrl-C stops at once; the newest checkpoint is intact (writes are atomic).
        raise Interrupted(
            f"stopped at once; {'the checkpoint of iteration ' + str(saved_at) + ' is kept' if saved_at else 'nothing was saved'}",
            f"resume with: golabels adapt --resume {run_dir}" if saved_at else "start the run again",
        ) from None
    except Exception:
        if saved_at and main:
            log.error("the checkpoint of iteration %d is kept: resume with golabels adapt --resume %s", saved_at, run_dir)
        raise
    finally:
        if metrics is not None:
            metrics.close()
        if not completed:
            tracker.close()

    seconds = seconds_before + time.perf_counter() - started
    if not main:
        return {}
    info = ModelInfo(cfg.backbone, t.source.classes, t.data_config, cfg.bottleneck_dim, cfg.method, cfg.domain_labels)
    if cfg.select != "last" and t.selected_weights is None:
        log.warning("--select %s could not be computed at any evaluated snapshot: model.safetensors holds the last iteration's weights", cfg.select)
        state.selected = {"iter": cfg.iters, "value": None}
    save(cfg.iters)
    if t.selected_weights is not None:
        t.model.load_state_dict(t.selected_weights)  # training is over: the model becomes the selected snapshot
    with target_batchnorm(t, workers, keep=True):  # the statistics the evaluations were scored with
        pass
    try:
        save_model(t.model, info, run_dir / "model.safetensors")
    except Exception as exc:  # OSError, or safetensors' own error type for a failed write
        raise RunError(f"cannot write {run_dir / 'model.safetensors'} ({_write_failure(exc, run_dir)})", _kept(saved_at, run_dir)) from exc
    summary = _summary(t, run_dir, state, seconds, (start, seconds - seconds_before))
    summary["results_figure"] = _results_figure(run_dir, summary)
    _write(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n", saved_at)
    tracker.finish(summary)
    progress("end", summary)
    return summary


def train_step(t: Training, forward: Callable, disc: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor | None,
               domain: torch.Tensor, coeff: float, source_class_weights: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on a source batch (and a target batch): CE + trade_off * L_adv + L_extra,
    each source image weighted by its class's weight in both losses if `source_class_weights`.
    Returns the detached losses and statistics, still on the device (no host sync)."""
    cfg, device = t.cfg, t.device
    xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
    x = torch.cat([xs, xt.to(device, non_blocking=True)]) if xt is not None else xs
    if x.dim() == 4 and t.speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, t.speed.autocast):
        if xt is not None and cfg.forward == "per-domain":
            # BatchNorm normalizes each domain's batch with that domain's own statistics.
            (logits_s, features_s), (logits_t, features_t) = forward(x[: len(xs)]), forward(x[len(xs):])
            logits, features = torch.cat([logits_s, logits_t]), torch.cat([features_s, features_t])
        else:
            logits, features = forward(x)
        row_weights = None
        if source_class_weights is None:
            loss_cls = F.cross_entropy(logits[: len(ys)].float(), ys)
        else:
            source_weights = source_class_weights[ys]
            loss_cls = (source_weights * F.cross_entropy(logits[: len(ys)].float(), ys, reduction="none")).mean()
            if xt is not None:
                row_weights = torch.cat([source_weights, torch.ones(len(logits) - len(ys), device=device)])
        probe: dict[str, torch.Tensor] = {}
        if xt is not None:
            loss_adv, loss_extra, stats = adversarial_loss(cfg.method, cfg.domain_labels, features, logits, domain, disc,
                                                           t.multilinear, coeff, t.model.head, t.method_params, row_weights, probe)
        else:
            loss_adv, loss_extra, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        loss = loss_cls + cfg.trade_off * loss_adv + loss_extra
    t.optimizer.zero_grad(set_to_none=True)
    if t.grad_scaler is not None:
        t.grad_scaler.scale(loss).backward()
        t.grad_scaler.step(t.optimizer)  # skipped when a gradient overflowed; the scale then shrinks
        t.grad_scaler.update()
    else:
        loss.backward()
        t.optimizer.step()
    if "norm" in probe:
        stats["adv_grad_norm"] = probe["norm"]
    return loss_cls.detach(), loss_adv.detach(), loss_extra.detach(), stats


ROLE_NAMES = {"source": "source", "source_val": "held-out source", "target": "target", "eval": "--eval-dir"}
HEAD_START_STREAM = 4  # the head start's own draws of the source (streams 0-3: training, validators)


def fit_head(t: Training, workers: int) -> float:
    """--head-start: the bottleneck and head fitted to the source's labels on the pretrained
    backbone's cached features (eval mode, eval transform), cfg.head_start SGD steps at --lr with
    the scaled decay, before the first fine-tuning step. A randomly initialized head's first large
    gradients would otherwise reach the backbone and distort the pretrained features (LP-FT,
    Kumar et al. 2022). Returns the last step's loss."""
    cfg, device = t.cfg, t.device
    features = backbone_features(t.source, t.model.backbone, model_key(cfg.backbone, t.model.backbone, t.data_config),
                                 t.data_config, device, cfg.cache_dir, 2 * cfg.batch_size, workers, "--head-start: features of the source")
    sampler = train_sampler(t.source, cfg.seed, HEAD_START_STREAM, 0, t.dist.rank, t.dist.world,
                            t.source.labels if cfg.balance_source else None)
    params = [*t.model.bottleneck.parameters(), *t.model.head.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    t.model.train()
    loss = torch.zeros(())
    batches = feature_batches(features.values, torch.tensor(t.source.labels), cfg.batch_size, sampler)
    for step in range(cfg.head_start):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * (1 + 20 / cfg.head_start * step) ** -cfg.lr_decay
        x, y = next(batches)
        logits, _ = t.model.classify(x.to(device))
        loss = F.cross_entropy(logits.float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = float(loss.detach())
    log.info("--head-start: bottleneck and head fitted on the backbone's features in %d steps (loss %.3f)", cfg.head_start, final)
    return final


@torch.no_grad()
def _outputs(model: Classifier, inputs: torch.Tensor | ImageSet, t: Training, workers: int, what: str = "predicting",
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, bottleneck features) in eval mode, of cached backbone features or of images."""
    if isinstance(inputs, torch.Tensor):
        return tuple(v.float().cpu() for v in model.classify(inputs.to(t.device)))
    loader = eval_loader(inputs, eval_transform(t.data_config), 2 * t.cfg.batch_size, workers, pin=t.speed.pin_memory)
    return predict_outputs(model, loader, t.device, t.speed.channels_last, t.speed.autocast, what)


def _role_outputs(t: Training, role: str, images: ImageSet, workers: int, indices: list[int] | None = None):
    """_outputs of one of the run's image sets (or the images at `indices` of it): of its cached
    backbone features under --freeze-backbone, `role` naming them ("source", "target", ...)."""
    if t.features is not None:
        values = t.features[role].values
        return _outputs(t.model, values[indices] if indices is not None else values, t, workers)
    return _outputs(t.model, images.subset(indices) if indices is not None else images, t, workers, f"evaluating: {ROLE_NAMES[role]}")


def _validate(t: Training, state: LoopState, workers: int) -> dict[str, Any]:
    """The validators of the current snapshot, and its --eval-dir accuracy (the oracle) if given,
    under the BatchNorm statistics it will ship with (--bn-stats)."""

    def outputs(role: str, images: ImageSet, indices: list[int] | None = None):
        return _role_outputs(t, role, images, workers, indices)

    was_training = t.model.training
    train_stats_acc = None
    t.model.eval()
    try:
        if t.cfg.bn_stats == "target" and t.eval_set is not None and _reestimated_layers(t):
            # The oracle under training's running statistics too, for the measurement of --bn-stats.
            images, to_model = t.eval_set
            train_stats_acc = score(images, to_model, t.source.classes, outputs("eval", images)[0].argmax(1)).accuracy
        with target_batchnorm(t, workers):
            scores = _validate_snapshot(t, state, outputs)
    finally:
        t.model.train(was_training)
    if train_stats_acc is not None:
        scores["target_acc_train_bn"] = train_stats_acc
    return scores


def _validate_snapshot(t: Training, state: LoopState, outputs: Callable) -> dict[str, Any]:
    """_validate's figures, with the model in eval mode."""
    v = t.validation
    target_logits, target_features = outputs("target", t.target, v.target_sample)
    val_logits = val_features = val_labels = train_features = None
    if v.source_val is not None:
        val_logits, val_features = outputs("source_val", v.source_val)
        val_labels = torch.tensor(v.source_val.labels)
        train_features = outputs("source", t.source, v.train_sample)[1]
    scores: dict[str, Any] = compute_validators(Outputs(val_logits, val_labels, val_features, train_features,
                                                        target_logits, target_features))
    # Label shift: the target's class distribution as the predictions imply it (EM), against the source's.
    target_prior = em_prior(target_logits.float().softmax(1), _trained_prior(t, state))
    scores["prior_shift"] = round(total_variation(target_prior, _source_prior(t)), 6)
    scores["target_prior"] = [round(float(v), 4) for v in target_prior]
    counts = _class_counts(target_logits, len(target_prior))
    scores["predicted_share"] = [round(float(v), 4) for v in counts / counts.sum()]
    # Against the shares the same model predicts on held-out source images: a model that leans
    # toward a class leans so on both domains, and that lean is not a label shift.
    if val_logits is not None:
        reference = _class_counts(val_logits, len(target_prior))
        scores["source_predicted_share"] = [round(float(v), 4) for v in reference / reference.sum()]
        scores["predicted_shift_p"] = shift_p_value(counts, reference)
    else:
        reference = _source_prior(t)
        scores["source_predicted_share"] = None
        scores["predicted_shift_p"] = shift_p_value(counts, reference, reference_is_prior=True)
    scores["predicted_shift"] = round(total_variation(counts / counts.sum(), reference / reference.sum()), 6)
    if t.eval_set is not None:
        images, to_model = t.eval_set
        logits = outputs("eval", images)[0]
        result = score(images, to_model, t.source.classes, logits.argmax(1))
        scores["target_acc"] = result.accuracy
        scores["target_mean_class_acc"] = result.mean_class_accuracy
    return scores


def _reestimated_layers(t: Training) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers --bn-stats target re-estimates: all of the classifier's, or under
    --freeze-backbone those after the cached features (a frozen backbone is never run here), and
    under --freeze-bn those after the backbone (whose statistics stay the pretrained ones)."""
    whole = t.features is None and not t.cfg.freeze_bn
    parts = [t.model] if whole else [t.model.bottleneck, t.model.head]
    return [m for part in parts for m in part.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def target_batchnorm(t: Training, workers: int, keep: bool = False) -> Iterator[None]:
    """--bn-stats target: the classifier's BatchNorm running statistics re-estimated on the
    validators' fixed target sample (AdaBN, Li et al. 2016), as a plain average over the sample in
    batches, with every other layer in eval mode; training's own statistics are put back after
    the block unless `keep` (the shipped model). Under --freeze-backbone only the layers after
    the cached features (the bottleneck's) are re-estimated: the backbone's stay ImageNet's."""
    layers = _reestimated_layers(t)
    if t.cfg.bn_stats != "target" or not layers:
        yield
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in layers]
    was_training = t.model.training
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        t.model.eval()
        for m in layers:
            m.train()
        _forward_target_sample(t, workers)
        t.model.eval()
        yield
    finally:
        t.model.train(was_training)
        for m, (mean, var, tracked, momentum) in zip(layers, saved):
            m.momentum = momentum
            if not keep:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)


@torch.no_grad()
def _forward_target_sample(t: Training, workers: int) -> None:
    sample = t.validation.target_sample
    batch = 2 * t.cfg.batch_size
    if t.features is not None:
        values = t.features["target"].values[sample]
        for start in range(0, len(values), batch):
            if len(values[start:start + batch]) > 1:  # BatchNorm needs two rows
                t.model.classify(values[start:start + batch].to(t.device))
        return
    loader = eval_loader(t.target.subset(sample), eval_transform(t.data_config), batch, workers, pin=t.speed.pin_memory)
    for x, _ in tracked(loader, "BatchNorm statistics of the target", len(sample), batch_size_of):
        if len(x) < 2:
            continue
        x = x.to(t.device, non_blocking=True)
        if t.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(t.device, t.speed.autocast):
            t.model(x)


def _class_counts(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """How many rows are predicted as each class."""
    return torch.bincount(logits.argmax(1), minlength=classes).float()


def eval_shift(t: Training) -> float | None:
    """The measured label shift: total variation between the classes of --eval-dir's labels and the
    source's; None without --eval-dir."""
    if t.eval_set is None:
        return None
    images, to_model = t.eval_set
    counts = torch.bincount(torch.tensor([to_model[y] for y in images.labels]), minlength=len(t.source.classes)).float()
    return total_variation(counts / counts.sum(), _source_prior(t))


def _source_prior(t: Training) -> torch.Tensor:
    counts = torch.bincount(torch.tensor(t.source.labels), minlength=len(t.source.classes)).float()
    return counts / counts.sum()


def _drawn_prior(t: Training) -> torch.Tensor:
    """The class prior the source batches are drawn with: uniform under --balance-source."""
    prior = _source_prior(t)
    return torch.full_like(prior, 1 / len(prior)) if t.cfg.balance_source else prior


def _trained_prior(t: Training, state: LoopState) -> torch.Tensor:
    """The class prior the classifier's posteriors are calibrated to: the drawn prior, times the
    class weights of --label-shift-weights once there are any. (EM under the drawn prior alone
    would read the weights' own bias toward a class as more of that class in the target, and
    re-weight further: a loop that collapses the model onto a few classes.)"""
    prior = _drawn_prior(t)
    if t.cfg.label_shift_weights and state.class_weights:
        prior = prior * torch.tensor(state.class_weights)
    return prior / prior.sum()


def _estimate_target(t: Training, state: LoopState, step: int, workers: int) -> None:
    """--balance-target, --label-shift-weights: pseudo-labels of every target training image and
    the class prior they imply, from the current model in eval mode. Rank 0 computes them
    and sends them to the others: each rank's BatchNorm statistics are its own, so their
    predictions would differ.

    The prior the weights come from is IWDAN's: BBSE on soft predictions, smoothed over refreshes.
    EM needs calibrated posteriors, and a young model's are not: its estimates swung to 0 for
    classes the target holds 17 % of, and the weights that followed trained those classes out of
    the model. For --balance-target alone the prior is only logged: EM, with no source pass, so
    the runs measured with it draw the same random numbers."""
    pseudo_labels = torch.zeros(len(t.target), dtype=torch.long)
    target_prior = torch.zeros(len(t.source.classes))
    if t.dist.main:
        was_training = t.model.training
        t.model.eval()
        try:
            probs = _role_outputs(t, "target", t.target, workers)[0].float().softmax(1)
            if t.cfg.label_shift_weights:
                source_probs, source_labels = _labeled_source_probs(t, workers)
                previous = torch.tensor(state.target_estimate["target_prior"]) if state.target_estimate else _source_prior(t)
                target_prior = moving_average(previous, bbse_prior(source_probs, source_labels, probs))
            else:
                target_prior = em_prior(probs, _trained_prior(t, state))
        finally:
            t.model.train(was_training)
        pseudo_labels = probs.argmax(1)
    pseudo_labels, target_prior = from_rank_0(t.dist, pseudo_labels), from_rank_0(t.dist, target_prior)
    state.pseudo_labels = pseudo_labels
    state.class_weights = [round(float(w), 6) for w in class_weights(target_prior, _drawn_prior(t))]
    counts = torch.bincount(state.pseudo_labels, minlength=len(t.source.classes))
    state.target_estimate = {"iter": step, "target_prior": [round(float(v), 4) for v in target_prior],
                             "pseudo_label_counts": counts.tolist()}


CONFUSION_IMAGES = 2000  # training source images BBSE's confusion matrix is taken on, without a held-out split


def _labeled_source_probs(t: Training, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted probabilities and labels of the held-out source images, or of a fixed sample of the
    training source when none are held out (fitted, so its confusion is optimistic: IWDAN's choice)."""
    held_out = t.validation.source_val
    if held_out is not None:
        return _role_outputs(t, "source_val", held_out, workers)[0].float().softmax(1), torch.tensor(held_out.labels)
    indices = sample_indices(len(t.source), CONFUSION_IMAGES, t.cfg.seed, 4)
    logits = _role_outputs(t, "source", t.source, workers, indices)[0]
    return logits.float().softmax(1), torch.tensor(t.source.labels)[indices]


def wilson_lower_bound(accuracy: float, n: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval of a proportion measured on n trials."""
    if n <= 0:
        return 0.0
    centre = accuracy + z * z / (2 * n)
    spread = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def _warn_on_label_shift(t: Training, state: LoopState, it: int, scores: dict[str, Any]) -> None:
    """Once per adversarial run: the share of the target the model predicts as each class is far
    from the share of the held-out source it predicts as each class (`predicted_shift`; from the
    source's class frequencies without a held-out split). Only from the second half of the run
    on: a young model's predictions collapse onto a few classes. And only when a difference as
    large is unlikely by chance (chi-square p < SHIFT_P_VALUE): a few held-out images read large
    differences out of noise. And only from a model that classifies the held-out source well
    enough to say anything about classes (the 95% lower bound of its accuracy halfway from chance
    to 1, so that a handful of held-out images cannot vouch for it): a model near chance
    puts the two domains on whichever classes it happens to, and its shares say nothing of the folders.

    The shares decide, not EM's estimate (`prior_shift`): EM sharpens the lean of uncalibrated
    posteriors, and read 0.21-0.39 on the balanced Office-31 runs (true shift 0.11)
    (benchmarks/RESULTS.md, issue 22). source-only is not warned: the harm warned of is
    alignment's, and source-only aligns nothing. With --eval-dir the measurement decides: labels
    that differ from the source's by SHIFT_WARNING or less turn the warning into an info line
    about the model's lean."""
    late = [e for e in state.evals if e["iter"] >= t.cfg.iters / 2]
    informed = (1 + 1 / len(t.source.classes)) / 2  # held-out source accuracy halfway from chance to 1
    held_out = len(t.validation.source_val or [])

    def shifted(e: dict[str, Any]) -> bool:
        # The accuracy's 95% lower bound, not the accuracy: 3 of 3 held-out images right says little.
        return ((e.get("predicted_shift") or 0) > SHIFT_WARNING and e.get("predicted_shift_p", 1.0) < SHIFT_P_VALUE
                and (e.get("src_acc") is None or wilson_lower_bound(e["src_acc"], held_out) >= informed))

    if t.cfg.method == "source-only" or it < t.cfg.iters / 2 or not shifted(scores) or any(shifted(e) for e in late[:-1]):
        return
    share, source = scores["predicted_share"], scores.get("source_predicted_share") or _source_prior(t).tolist()
    order = sorted(range(len(share)), key=lambda i: -abs(share[i] - source[i]))[:3]
    leaning = ", ".join(f"{t.source.classes[i]!r} {share[i]:.0%} vs {source[i]:.0%}" for i in order)
    shift = eval_shift(t)
    if shift is not None and shift <= SHIFT_WARNING:
        # --eval-dir's labels are a measurement of the target's classes, and they contradict the
        # reading: what differs is the model's errors, not the folders.
        log.info("the model's target predictions lean on some classes (total variation %.2f from its held-out source "
                 "predictions: %s), while the labels of --eval-dir differ from the source's by %.2f: a lean of its errors, "
                 "not a label shift", scores["predicted_shift"], leaning, shift)
        return
    measured = f"; the labels of --eval-dir differ from the source's by {shift:.2f}" if shift is not None else ""
    source_imbalanced = imbalance_ratio(class_counts(t.source)) > IMBALANCE_WARNING
    log.warning("label shift: the model predicts the target's classes in other shares than the source's "
                "(total variation %.2f%s; share of the target predicted vs of the source: %s): "
                "adversarial alignment can then pull target images onto the wrong classes — %s",
                scores["predicted_shift"], measured, leaning,
                remedy_hint(remedy_flags(t.cfg), recommend=source_imbalanced))


def _keep_if_selected(t: Training, state: LoopState, it: int, scores: dict[str, Any]) -> None:
    """--select: remember this snapshot if its validator beats the best so far (ties keep the earlier)."""
    if t.cfg.select == "last":
        state.selected = {"iter": it, "value": None}
        return
    name = metric_key(t.cfg.select)
    value = scores.get(name)
    if not state.selected or better(name, value, state.selected.get("value")):
        if value is None:
            return  # a validator that could not be computed never selects
        state.selected = {"iter": it, "value": value}
        t.selected_weights = {k: v.detach().to("cpu", copy=True) for k, v in t.model.state_dict().items()}


class _Classify(torch.nn.Module):
    """The part of the classifier after the backbone as a module of its own, so that DDP can wrap
    what --freeze-backbone trains."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, backbone_features: torch.Tensor):
        return self.model.classify(backbone_features)


def feature_batches(values: torch.Tensor, labels: torch.Tensor | None, batch_size: int, sampler):
    """Batches of cached features drawn by the same sampler as the images would be."""
    draws = iter(sampler)
    while True:
        index = torch.tensor([next(draws).index for _ in range(batch_size)])
        yield values[index], (labels[index] if labels is not None else torch.full((batch_size,), -1))


def _metrics_row(t: Training, it: int, lr: float, coeff: float, sums: dict[str, torch.Tensor], window: int) -> dict[str, Any]:
    values = {k: float(v) / window for k, v in sums.items()}  # one host sync per logged row
    row = {"iter": it, **{k: round(v, 6) for k, v in values.items()}, "lr": lr, "lambda": round(coeff, 6)}
    if not t.adversarial:
        row.update({k: None for k in STAT_KEYS if k not in ("loss_cls", "loss_adv")})
    elif t.cfg.method not in ("gvb", "asan"):
        row["loss_extra"] = None
    return row


def _checkpoint(t: Training, state: LoopState) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": dataclasses.asdict(t.cfg),
        "classes": t.source.classes,
        "fingerprint": t.fingerprint,
        "model": t.model.state_dict(),
        "discriminator": t.disc.state_dict(),
        "multilinear": t.multilinear.state_dict() if t.multilinear is not None else {},
        "selected_model": t.selected_weights or {},
        "optimizer": t.optimizer.state_dict(),
        **({"grad_scaler": t.grad_scaler.state_dict()} if t.grad_scaler is not None else {}),
        "rng": rng_state(t.device),
        "loop": dataclasses.asdict(state),
    }


def environment(device: torch.device) -> dict[str, str | None]:
    """What decides the numbers besides the config: the libraries' versions and the hardware.
    The same config and seed gave other figures in a fresh install on another machine (one DANN
    run on MNIST → USPS: 60.94 % then 83.42 %), so a result is comparable only with these beside it."""
    env: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "pillow"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    env["cpu"] = _cpu_model()
    env["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()  # which vectorized kernels torch dispatches to
    env["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return env


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _summary(t: Training, run_dir: Path, state: LoopState, seconds: float, session: tuple[int, float]) -> dict[str, Any]:
    """`session`: the iteration this process started at (> 0 when resumed) and its own seconds."""
    cfg = t.cfg
    first, session_seconds = session
    images_per_step = cfg.batch_size * (2 if t.adversarial else 1) * t.dist.world
    eval_images = t.eval_set[0] if t.eval_set else None
    selected = next((e for e in state.evals if e["iter"] == state.selected.get("iter")), {})
    skipped = [("source", t.source), ("target", t.target)] + ([("eval", eval_images)] if eval_images else [])
    return {
        "golabels_version": __version__,
        "environment": environment(t.device),
        "run_dir": str(run_dir),
        "backbone": cfg.backbone,
        "method": cfg.method,
        "domain_labels": cfg.domain_labels,
        "bn_stats": cfg.bn_stats,
        "iters": cfg.iters,
        "seconds": round(seconds, 2),
        # this session's throughput: a resumed run's earlier sessions may have run elsewhere
        "images_per_s": round((cfg.iters - first) * images_per_step / max(session_seconds, 1e-9), 1),
        "resumed_at": first or None,
        "session_seconds": round(session_seconds, 2),
        "device": str(t.device),
        "processes": t.dist.world,
        "effective_batch": cfg.batch_size * t.dist.world,  # per domain, over all processes
        "lr_scale": t.lr_scale,
        "classes": t.source.classes,
        "images": {"source": len(t.source), "source_val": len(t.validation.source_val or []), "target": len(t.target),
                   "target_validated": len(t.validation.target_sample), "eval": len(eval_images) if eval_images else 0},
        "skipped": {
            "source": len(t.source.skipped),
            "target": len(t.target.skipped),
            "eval": len(eval_images.skipped) if eval_images else 0,
        },
        "skipped_files": [{"role": role, "path": str(p), "reason": why} for role, images in skipped for p, why in images.skipped],
        "data": t.report,
        "final": {k: state.last_row.get(k) for k in ("loss_cls", "loss_adv", "disc_acc", "relabeled_src", "relabeled_tgt", "adv_grad_norm")},
        # target_acc is that of model.safetensors, the selected snapshot (the oracle: --eval-dir's labels)
        "target_acc": selected.get("target_acc"),
        "target_mean_class_acc": selected.get("target_mean_class_acc"),
        "selected": {"by": cfg.select, "iter": state.selected.get("iter"), "value": state.selected.get("value")},
        "evals": state.evals,
        "target_estimate": ({**state.target_estimate, "class_weights": state.class_weights if cfg.label_shift_weights else None}
                            if state.target_estimate else None),
        "features": {role: {"cached": f.cached, "computed": f.computed} for role, f in t.features.items()} if t.features else None,
    }


# ---- signals and files ------------------------------------------------------------------------


def _results_figure(run_dir: Path, summary: dict[str, Any]) -> str | None:
    """results.png, when matplotlib is installed; a figure that cannot be drawn costs a warning, not the run."""
    from .report import load_run, write_results_figure

    try:
        record = load_run(run_dir)
        record.summary = summary
        path = write_results_figure(record)
    except Exception as exc:  # noqa: BLE001 - a plotting library's failure of any kind
        log.warning("results.png not written (%s)", reason(exc))
        return None
    return path.name if path is not None else None


@contextmanager
def _stop_requests() -> Iterator[list[str]]:
    """The first SIGINT or SIGTERM asks the loop to stop after the step in progress (the list gets
    the signal's name); a second one stops at once (KeyboardInterrupt)."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set in the main thread
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append("interrupted" if signum == signal.SIGINT else "terminated")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _kept(saved_at: int | None, run_dir: Path) -> str:
    if saved_at:
        return f"the checkpoint of iteration {saved_at} is kept; fix it, then: golabels adapt --resume {run_dir}"
    return "fix it and start the run again"


def _write_failure(exc: BaseException, folder: Path) -> str:
    """Why a write failed, in words: torch.save reports a full disk as `[enforce fail at
    inline_container.cc] unexpected pos`, safetensors as its own error type."""
    try:
        full = shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        full = False
    if full:
        return "no space left on the device"
    return reason(exc) if isinstance(exc, OSError) else f"the write failed: {reason(exc)}"


def _save(checkpoint: dict[str, Any], path: Path, saved_at: int | None, run_dir: Path) -> None:
    try:
        torch_save_atomic(checkpoint, path)
    except (OSError, RuntimeError) as exc:  # torch.save's writer raises RuntimeError on a short write
        raise RunError(f"cannot save the training state to {path} ({_write_failure(exc, run_dir)})", _kept(saved_at, run_dir)) from exc


def _write(path: Path, text: str, saved_at: int | None) -> None:
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise RunError(f"cannot write {path} ({_write_failure(exc, path.parent)})", _kept(saved_at, path.parent)) from exc


def _open_metrics(path: Path):
    try:
        return open(path, "a")
    except OSError as exc:
        raise RunError(f"cannot write {path} ({reason(exc)})", "check the folder's permissions and free space") from exc


def _append(metrics, row: dict[str, Any], run_dir: Path) -> None:
    try:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
    except OSError as exc:
        raise RunError(f"cannot write {run_dir / 'metrics.jsonl'} ({reason(exc)})", "check the folder's free space") from exc


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop rows logged after the checkpoint: the resumed run logs them again."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["iter"] <= iteration:
                    rows.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a row cut short by a crash
    _write(path, "".join(rows), iteration)
