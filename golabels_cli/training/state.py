"""What a run is made of (Training, built once from the config and frozen after) and where its loop
is (LoopState: everything that changes while it trains, saved in every checkpoint)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import AdaptConfig
from ..data import ImageSet
from ..decoded import DecodedImages
from ..distributed import SINGLE, Dist, lr_factor
from ..features import Features
from ..methods import MultilinearMap, Objective, Recipe, get_recipe
from ..models import Classifier
from ..progress import RunListener
from .runtime import Speed

# What a run reports its events to (progress.RunEvent: DataRead, RunStarted, StepDone, RowLogged, RunFinished).
Progress = RunListener
# loss_extra: an alignment method's own loss (GVB's bridges, ASAN's spectra); loss_target: the
# recipe's losses on the target's predictions (MCC, BNM, IM, AaD), unweighted; loss_teacher: the
# cross-entropy to a teacher's labels of the target (--teacher), unweighted.
LOSS_KEYS = ("loss_cls", "loss_adv", "loss_extra", "loss_target", "loss_teacher")
# adv_grad_norm: the norm of the adversarial gradient reaching the features (after --trade-off and
# the reversal coefficient): what Go-labels' relabeling takes away, next to the fractions relabeled.
STAT_KEYS = (*LOSS_KEYS, "disc_acc", "disc_acc_src", "disc_acc_tgt", "relabeled_src", "relabeled_tgt", "adv_grad_norm")
# The run's image sets, as features, progress and messages name them.
ROLE_NAMES = {"source": "source", "source_val": "held-out source", "target": "target", "eval": "--eval-dir"}


@dataclass
class Validation:
    """What the validators look at: the held-out source split, a fixed sample of the target, and
    a sample of the training source (DEV's domain classifier), as indices into source/target."""

    source_val: ImageSet | None
    target_sample: list[int]
    train_sample: list[int]


@dataclass(frozen=True)
class Training:
    """Everything built from a config before anything is written: inputs checked, model, objective
    and optimizer made. Frozen: what changes while the run trains (the weights inside the model
    and optimizer aside) is the LoopState's."""

    cfg: AdaptConfig
    device: torch.device
    source: ImageSet  # the training split of the source folder
    target: ImageSet
    eval_set: tuple[ImageSet, list[int]] | None
    validation: Validation
    report: dict[str, Any]  # data_report() of the folders
    data_config: dict
    model: Classifier
    disc: torch.nn.Module | None  # None: a recipe of target losses alone builds no discriminator
    multilinear: MultilinearMap | None
    objective: Objective  # the recipe's loss, with the discriminator, map, weights and domain-label mode
    optimizer: torch.optim.Optimizer
    speed: Speed
    dist: Dist = SINGLE
    features: dict[str, Features] | None = None  # --freeze-backbone: "source", "target", "eval", "source_val"
    # "source", "target": DecodedImages (--augment batched), or arrays (--augment per-image --cache-images)
    decoded: dict[str, DecodedImages | list[np.ndarray] | None] | None = None
    grad_scaler: torch.amp.GradScaler | None = None  # --precision fp16
    # fine-tuning a pretrained backbone on a CPU: the feature cache's key for its weights as loaded,
    # which --freeze-backbone would compute features with (the frozen-path hint counts what is cached)
    frozen_key: str | None = None
    teacher: dict[str, Any] | None = None  # --teacher: what summary.json says of it (teacher.Teaching.record)

    @functools.cached_property
    def recipe(self) -> Recipe:
        return get_recipe(self.cfg.method)

    @property
    def lr_scale(self) -> float:
        return lr_factor(self.cfg.lr_scaling, self.dist.world)

    @property
    def workers(self) -> int:
        return self.cfg.resolved_workers()

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
    eval_seconds: float = 0.0  # of that time, spent evaluating (validators, --eval-dir, BatchNorm re-estimates)
    # --select: the best snapshot's model state so far (the checkpoint's "selected_model", not "loop")
    selected_weights: dict[str, torch.Tensor] | None = None

    def saved(self) -> dict[str, Any]:
        """The checkpoint's "loop" entry: every field but the selected weights, saved beside it."""
        loop = dataclasses.asdict(dataclasses.replace(self, selected_weights=None))
        del loop["selected_weights"]
        return loop
