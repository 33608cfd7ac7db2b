"""adapt(): the whole training run, top to bottom.

Each step draws `batch_size` labeled source images and `batch_size` unlabeled target images,
runs them through the classifier in one forward pass (so BatchNorm sees both domains), and
minimizes  L = CE(source logits, source labels) + trade_off * L_adv  where L_adv is the method's
discriminator loss (see `methods`) with the chosen domain targets (see `domain_labels`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import claim_run_dir, save_model, torch_save_atomic, write_json_atomic, write_text_atomic
from .config import AdaptConfig, to_yaml
from .data import scan_labeled, scan_unlabeled, train_loader, train_transform
from .errors import InputError, RunError
from .evaluate import evaluate_images, labeled_for_model
from .methods import MultilinearMap, adversarial_loss, discriminator_input_dim, grl_coeff
from .model_info import ModelInfo
from .models import Classifier, check_backbone_name, create_backbone, discriminator, resolve_data_config

log = logging.getLogger("golabels")

Progress = Callable[[str, dict[str, Any]], None]
STAT_KEYS = ("loss_cls", "loss_adv", "disc_acc", "disc_acc_src", "disc_acc_tgt", "relabeled_src", "relabeled_tgt")


def pick_device(name: str) -> torch.device:
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


def _set_lr(optimizer: torch.optim.Optimizer, cfg: AdaptConfig, step: int) -> float:
    factor = (1.0 + cfg.resolved_lr_gamma() * step) ** (-cfg.lr_decay)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return cfg.lr * factor


def _nothing(kind: str, data: dict[str, Any]) -> None:
    pass


def adapt(
    cfg: AdaptConfig,
    out: str | Path | None = None,
    exist_ok: bool = False,
    progress: Progress = _nothing,
) -> dict[str, Any]:
    """Train on cfg.source (labeled) and cfg.target (unlabeled); returns the summary.

    Every input is checked before the run directory is created, so bad input leaves nothing behind.
    """
    device = pick_device(cfg.device)
    check_backbone_name(cfg.backbone)
    source = scan_labeled(cfg.source, "source")
    if len(source.classes) < 2:
        raise InputError(f"source folder {cfg.source} has only one class ({source.classes[0]!r})", "a classifier needs at least two class folders")
    target = scan_unlabeled(cfg.target, "target")
    eval_set = labeled_for_model(cfg.eval_dir, source.classes, "eval") if cfg.eval_dir else None

    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.weights)
    data_config = resolve_data_config(backbone, cfg.image_size)
    model = Classifier(backbone, len(source.classes), cfg.bottleneck_dim).to(device)
    adversarial = cfg.method != "source-only"
    disc_in = discriminator_input_dim(cfg.method, cfg.bottleneck_dim, len(source.classes))
    disc = discriminator(disc_in, cfg.disc_hidden).to(device)
    multilinear = None
    if cfg.method in ("cdan", "cdan-e"):
        multilinear = MultilinearMap(cfg.bottleneck_dim, len(source.classes), torch.Generator().manual_seed(cfg.seed)).to(device)

    # Pretrained features move slowly (TLlib's recipe); features learned from scratch need the full rate.
    backbone_mult = cfg.backbone_lr_mult if (cfg.pretrained or cfg.weights) else 1.0
    groups = [
        {"params": model.backbone.parameters(), "initial_lr": cfg.lr * backbone_mult},
        {"params": list(model.bottleneck.parameters()) + list(model.head.parameters()), "initial_lr": cfg.lr},
    ]
    if adversarial:
        groups.append({"params": disc.parameters(), "initial_lr": cfg.lr})
    for g in groups:
        g["lr"] = g["initial_lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)

    workers = cfg.resolved_workers()
    cuda = device.type == "cuda"
    transform = train_transform(data_config, cfg.min_crop, cfg.hflip)
    source_batches = iter(train_loader(source, transform, cfg.batch_size, cfg.seed, 0, workers, cuda))
    target_batches = iter(train_loader(target, transform, cfg.batch_size, cfg.seed, 1, workers, cuda)) if adversarial else None

    run_dir = claim_run_dir(out, exist_ok)
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    metrics_file = open(run_dir / "metrics.jsonl", "w")
    info = ModelInfo(cfg.backbone, source.classes, data_config, cfg.bottleneck_dim, cfg.method, cfg.domain_labels)
    counts = Counter(source.labels)
    progress("start", {
        "run_dir": str(run_dir), "iters": cfg.iters, "device": str(device), "classes": source.classes,
        "source_images": len(source), "target_images": len(target),
        "source_per_class": {c: counts[i] for i, c in enumerate(source.classes)},
    })

    domain = torch.cat([torch.ones(cfg.batch_size), torch.zeros(cfg.batch_size)]).to(device)
    sums = {k: torch.zeros((), device=device) for k in STAT_KEYS}
    window = 0
    last_row: dict[str, Any] = {}
    evals: list[dict[str, Any]] = []
    model.train()
    disc.train()
    started = time.perf_counter()
    try:
        for step in range(cfg.iters):
            lr = _set_lr(optimizer, cfg, step)
            coeff = grl_coeff(step, cfg.iters, cfg.grl_alpha)
            xs, ys = next(source_batches)
            xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
            x = torch.cat([xs, next(target_batches)[0].to(device, non_blocking=True)]) if adversarial else xs
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                logits, features = model(x)
                loss_cls = F.cross_entropy(logits[: cfg.batch_size].float(), ys)
                if adversarial:
                    loss_adv, stats = adversarial_loss(cfg.method, cfg.domain_labels, features, logits, domain, disc, multilinear, coeff)
                else:
                    loss_adv, stats = torch.zeros((), device=device), {}
                loss = loss_cls + cfg.trade_off * loss_adv
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            sums["loss_cls"] += loss_cls.detach()
            sums["loss_adv"] += loss_adv.detach()
            for k, v in stats.items():
                sums[k] += v
            window += 1
            it = step + 1
            progress("step", {"iter": it})
            do_eval = eval_set is not None and (it == cfg.iters or (cfg.eval_every and it % cfg.eval_every == 0))
            if it % cfg.log_every == 0 or it == cfg.iters or do_eval:
                values = {k: float(v) / window for k, v in sums.items()}  # one host sync per logged row
                bad = [k for k in ("loss_cls", "loss_adv") if not math.isfinite(values[k])]
                if bad:
                    raise RunError(f"training diverged at iteration {it}: {bad[0]} = {values[bad[0]]}", "lower --lr or --trade-off")
                row = {"iter": it, **{k: round(v, 6) for k, v in values.items()}, "lr": lr, "lambda": round(coeff, 6)}
                if not adversarial:
                    row.update({k: None for k in STAT_KEYS if k != "loss_cls" and k != "loss_adv"})
                if do_eval:
                    result = evaluate_images(model, eval_set[0], eval_set[1], source.classes, data_config, device, 2 * cfg.batch_size, workers)
                    row["target_acc"] = round(result.accuracy, 6)
                    row["target_mean_class_acc"] = round(result.mean_class_accuracy, 6)
                    evals.append({"iter": it, "accuracy": result.accuracy, "mean_class_accuracy": result.mean_class_accuracy})
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                progress("log", row)
                last_row = row
                sums = {k: torch.zeros((), device=device) for k in STAT_KEYS}
                window = 0
    finally:
        metrics_file.close()
    seconds = time.perf_counter() - started

    save_model(model, info, run_dir / "model.safetensors")
    torch_save_atomic(
        {
            "format": "golabels-checkpoint/1",
            "version": __version__,
            "iter": cfg.iters,
            "config": dataclasses.asdict(cfg),
            "classes": source.classes,
            "model": model.state_dict(),
            "discriminator": disc.state_dict(),
            "multilinear": multilinear.state_dict() if multilinear is not None else {},
            "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
        },
        run_dir / "checkpoint.pt",
    )
    summary = {
        "golabels_version": __version__,
        "run_dir": str(run_dir),
        "backbone": cfg.backbone,
        "method": cfg.method,
        "domain_labels": cfg.domain_labels,
        "iters": cfg.iters,
        "seconds": round(seconds, 2),
        "images_per_s": round(cfg.iters * cfg.batch_size * (2 if adversarial else 1) / max(seconds, 1e-9), 1),
        "device": str(device),
        "classes": source.classes,
        "images": {"source": len(source), "target": len(target), "eval": len(eval_set[0]) if eval_set else 0},
        "skipped": {
            "source": len(source.skipped),
            "target": len(target.skipped),
            "eval": len(eval_set[0].skipped) if eval_set else 0,
        },
        "final": {k: last_row.get(k) for k in ("loss_cls", "loss_adv", "disc_acc", "relabeled_src", "relabeled_tgt")},
        "target_acc": evals[-1]["accuracy"] if evals else None,
        "target_mean_class_acc": evals[-1]["mean_class_accuracy"] if evals else None,
        "evals": evals,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    progress("end", summary)
    return summary
