"""Every `adapt` option declared once: its config field and default, its help, its --help panel,
its metavar and its choices. The `adapt` command and its --help (cli.py), the config file's keys and
the checks of a value's type and choice (config.py) are all generated from these declarations:
adding an option is one field here (and its use where it acts).

Torch-free on purpose: --help and every check run before torch and timm load.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .choices import (ALIGNMENT_TERMS, AUGMENTS, AUTO_METHOD, BASELINE, BN_STATS, CALIBRATIONS, CDAN_MAPS, DEVICES, DISCRIMINATORS,
                      DOMAIN_LABEL_MODES, FORWARDS, LOGGERS, LR_SCALINGS, PRECISIONS,
                      REFERENCE_HORIZON, REFERENCE_LR_GAMMA, SCHEDULES, SEARCH_PICKS, SEARCH_RECIPES, SELECT_CHOICES, TARGET_LOSS_NAMES,
                      parse_recipe_name)

# The --help panels, in the order they are shown.
DATA, METHOD, TRAINING, EVALUATION, LABEL_SHIFT, PERFORMANCE, OUTPUT = PANELS = (
    "Data", "Method and Go-labels", "Training", "Evaluation and selection", "Label shift", "Performance", "Run directory and output")


@dataclass(frozen=True)
class Option:
    """How one option is offered. A bool is a flag: --name when its default is False, --name/--no-name
    otherwise; an option whose default is None shows no default (its help says how it is decided).

    help: its --help text; "{choices}" in it becomes the choices joined by " | ".
    choices: the values accepted (checked by config.validate, with a "did you mean" hint).
    argument: a positional argument (SOURCE, TARGET) rather than an option.
    short: a one-letter alias (-q).
    methods: the --method parts that alone read it (named first in its help); each method's module
        takes its options from here (options_of), so a method's option is declared once, and
        without torch.
    minimum, maximum: the range of a number (None: unbounded), each bound excluded when
        open_min / open_max; config.validate refuses a value outside it, saying `range_text()`
        and `range_hint`.
    """

    help: str
    panel: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    argument: bool = False
    short: str | None = None
    methods: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    range_hint: str | None = None

    def in_range(self, value: float) -> bool:
        low_ok = self.minimum is None or (value > self.minimum if self.open_min else value >= self.minimum)
        high_ok = self.maximum is None or (value < self.maximum if self.open_max else value <= self.maximum)
        return low_ok and high_ok

    def range_text(self, kind: str) -> str:
        """What a value must be, for its error: "a positive integer", "in [0, 1)", ..."""
        low, high = self.minimum, self.maximum
        if high is None:
            if kind == "int":
                return {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer of at least {low}")
            return "positive" if low == 0 and self.open_min else "a non-negative number" if low == 0 else f"at least {low:g}"
        if kind == "int" and low in (0, 1) and not self.open_min:
            return f"{'a non-negative' if low == 0 else 'a positive'} integer of at most {high}"
        shown = str if kind == "int" else (lambda v: f"{v:g}")
        return f"in {'(' if self.open_min else '['}{shown(low)}, {shown(high)}{')' if self.open_max else ']'}"

    def text(self) -> str:
        text = self.help.replace("{choices}", " | ".join(self.choices))
        return f"{', '.join(self.methods)}: {text}" if self.methods else text


def option(default: Any, panel: str | None, help: str, **spec: Any) -> Any:
    """A dataclass field carrying its Option."""
    return field(default=default, metadata={"option": Option(help, panel, **spec)})


def declaration(f: dataclasses.Field) -> Option:
    return f.metadata["option"]


def option_name(key: str) -> str:
    return key.replace("_", "-")


def value_kind(annotation: str) -> tuple[str, bool]:
    """A field's annotation ("int | None") as its kind ("int") and whether None is allowed."""
    kinds = [k.strip() for k in annotation.split("|")]
    return kinds[0], "None" in kinds


ENSEMBLE_HELP = ("ensemble (the adapted candidates' heads on the one backbone, their probabilities averaged; source-only is "
                 "left out) | student (one new head taught by that ensemble, its labels refined by the target's clusters: one "
                 "candidate's cost at inference) | agreement (the candidate agreeing most with the ensemble on the target) | a "
                 "validator's name (the candidate it scores best: " + " | ".join(SEARCH_PICKS[3:]) + ").")
MAX_THREADS = 1024  # --threads: a count above it is a typo (a million threads cannot start, 10^20 overflows)
DEFAULT_FREEZE_BN = True  # fine-tuning a pretrained backbone (benchmarks/RESULTS.md, issue 23)
DEFAULT_HEAD_START = 0
PRETRAINED_TRADE_OFF = 2.0  # --trade-off's default with a pretrained backbone, frozen or fine-tuned
FROZEN_BACKBONE_METHOD = "auto"  # --method's default with --freeze-backbone (issue 42; cdan-e+bnm since issue 33 before it)
# What --method auto's default search costs against one adversarial run on cached features: 2.3-2.5x
# in training seconds with the ensemble (issue 42), 2.6-3.2x with the student on the machine of
# issue 52 (its rounds: 41.5, 38.0, 43.1 s against 14.7, 14.6, 13.5; benchmarks/RESULTS.md).
SEARCH_COST = 2.8
TRAINED_BACKBONE_METHOD = "cdan-e"  # --method's default when the backbone trains (issue 22)
# --iters' defaults: on cached features the search at 1000 iterations was within one std of 2000,
# 5000 and 10000 on Office-31 amazon <-> webcam, 5 seeds (benchmarks/RESULTS.md, issue 45), at a
# tenth of 10000's time; a backbone that trains keeps the length of the reference recipes.
FROZEN_ITERS = 1000
TRAINED_ITERS = 10000
# --search-pick's default: the student, within one std of the best candidate on all 12 tasks measured and
# the best mean (ensemble before it, issue 42; benchmarks/RESULTS.md, issue 52).
DEFAULT_SEARCH_PICK = "student"
# The seeds the generators are given derive from --seed (seed * 1_000_003 + stream, times 7 for the
# balanced draws) and must stay below 2^64; numpy's legacy seed takes 32 bits.
MAX_SEED = 2**32 - 1
POSITIVE = {"minimum": 1}  # an integer of at least 1
COUNT = {"minimum": 0}  # an integer of at least 0, or a non-negative number


@dataclass
class AdaptConfig:
    """What to train: every value config.yaml holds (keys are the option names)."""

    source: str | None = option(None, None, "Labeled source folder, `SOURCE/<class>/<image>` (required unless --config or --resume gives "
                                            "it).", argument=True)
    target: str | None = option(None, None, "Unlabeled target folder: any tree of images; sub-folder names are never read (required unless "
                                            "--config or --resume gives it).", argument=True)
    backbone: str = option("resnet50", TRAINING, "Any timm model name.")
    # A recipe (methods/recipe.py), or auto. None: FROZEN_BACKBONE_METHOD with --freeze-backbone,
    # where the ensemble of the search's adapted candidates was within one std of the best
    # candidate on each of 8 tasks and above every single recipe on their mean (issue 42);
    # TRAINED_BACKBONE_METHOD when the backbone trains, where a search costs several fine-tunings
    # and the losses on predictions are not measured yet (benchmarks/RESULTS.md).
    method: str | None = option(None, METHOD, f"An alignment term ({' | '.join(ALIGNMENT_TERMS)}), losses on the target's predictions "
                                              f"({' | '.join(TARGET_LOSS_NAMES)}), or both joined by + ({SEARCH_RECIPES[0]}); "
                                              f"{AUTO_METHOD}: train each of --search-recipes on the cached features and let the target's "
                                              f"own data choose (--freeze-backbone). Default: {FROZEN_BACKBONE_METHOD} with "
                                              f"--freeze-backbone, {TRAINED_BACKBONE_METHOD} when the backbone trains (docs/methods.md).")
    # --method auto only (search.py); None: SEARCH_RECIPES and DEFAULT_SEARCH_PICK, resolved into
    # config.yaml by an auto run and left out (null) of every other run's.
    search_recipes: str | None = option(None, METHOD, f"--method {AUTO_METHOD}: the candidate recipes, joined by commas, each a run of its "
                                                      f"own under RUN/candidates/. Default: {', '.join(SEARCH_RECIPES)}.", metavar="LIST")
    search_pick: str | None = option(None, METHOD, f"--method {AUTO_METHOD}: how the shipped model is chosen without target labels: "
                                                   f"{ENSEMBLE_HELP} Default: {DEFAULT_SEARCH_PICK}.", choices=SEARCH_PICKS)
    # fixed, not go: with CDAN+E, Go-labels lost to fixed labels on Office-31 on every measured
    # recipe and were level on digits (benchmarks/RESULTS.md, issue 22); --domain-labels go to use them.
    domain_labels: str = option("fixed", METHOD, "{choices}: the discriminator's targets (go: Go-labels; docs/method.md says where they "
                                                 "gained).", choices=DOMAIN_LABEL_MODES)
    # None: FROZEN_ITERS with --freeze-backbone, TRAINED_ITERS when the backbone trains.
    iters: int | None = option(None, TRAINING, "Training iterations. Default: 1000 with --freeze-backbone (longer measured no better; "
                                               "benchmarks/RESULTS.md, issue 45), 10000 when the backbone trains.", **POSITIVE)
    batch_size: int = option(32, TRAINING, "Images per domain per step (source and target each).", minimum=2, range_hint="BatchNorm needs "
                                                                                                                         "two samples per "
                                                                                                                         "domain")
    lr: float = option(0.01, TRAINING, "Learning rate of the new layers; a pretrained backbone gets --backbone-lr-mult times it.",
                       minimum=0, open_min=True)
    backbone_lr_mult: float = option(0.1, TRAINING, "Learning-rate multiplier of a pretrained backbone (a backbone from random init trains "
                                                    "at --lr).", **COUNT)
    momentum: float = option(0.9, TRAINING, "SGD momentum (Nesterov).", minimum=0, maximum=1, open_max=True,
                             range_hint="SGD's momentum; the default is 0.9")
    weight_decay: float = option(0.001, TRAINING, "SGD weight decay.", **COUNT)
    # reference: lambda's horizon is 10000 iterations and gamma 0.001 whatever --iters (the original
    # CDAN code, TLlib); scaled: both follow --iters (horizon = iters, gamma = 20 / iters).
    schedule: str = option("scaled", METHOD, "reference: the reversal coefficient and lr decay of the original code, on absolute "
                                             "iterations (lambda 0.46 at 1000); scaled: both stretched to --iters (lambda 0.99 at the "
                                             "end).", choices=SCHEDULES)
    lr_gamma: float | None = option(None, TRAINING, "The lr decays as lr x (1 + gamma x i)^-lr_decay. Default: 20 / --iters with "
                                                    "--schedule scaled, 0.001 with reference or with a loss on the target's predictions "
                                                    f"({', '.join(TARGET_LOSS_NAMES)}).",
                                                    **COUNT)  # lr * (1 + gamma * i) ** -lr_decay; None: resolved_lr_gamma()
    lr_decay: float = option(0.75, TRAINING, "The exponent of that decay.", **COUNT)
    grl_alpha: float = option(10.0, METHOD, "Steepness of the reversal coefficient's ramp 2 / (1 + exp(-alpha x progress)) - 1.", **COUNT)
    # joint: source and target in one forward pass, BatchNorm over both (TLlib, the original CDAN code);
    # per-domain: one pass per domain, each normalized with its own batch statistics (GVB's, ASAN's code).
    forward: str = option("joint", METHOD, "joint: source and target in one forward pass, BatchNorm over both (TLlib, the original CDAN "
                                           "code) | per-domain: one pass per domain, each with its own statistics (GVB's and ASAN's code).",
                                           choices=FORWARDS)
    # BatchNorm running statistics the model is evaluated and shipped with: train (training's running
    # averages, over source+target batches) or target (re-estimated on the target sample, AdaBN).
    # None: target for the adversarial methods, train for source-only, which reads no target image,
    # and with --sync-bn (measured: benchmarks/RESULTS.md, "--bn-stats").
    bn_stats: str | None = option(None, EVALUATION, "BatchNorm statistics the model is evaluated and shipped with: train (training's "
                                                    "running averages) | target (re-estimated on the target images at each evaluation and "
                                                    "at the end: AdaBN). Default: target for the adversarial methods, train for "
                                                    f"{BASELINE}.", choices=BN_STATS)
    # Fine-tuning only (not --freeze-backbone). freeze_bn: the backbone's BatchNorm layers keep their
    # pretrained running statistics (eval mode) while its weights train. head_start: iterations that
    # fit the bottleneck and head on the frozen backbone's cached features, with the source's labels,
    # before the first fine-tuning step (LP-FT, Kumar et al. 2022): a random head's gradients then
    # do not distort the pretrained features. Not counted in --iters.
    # None: freeze_bn on and head_start 0 when fine-tuning a pretrained backbone, off otherwise
    # (measured: benchmarks/RESULTS.md, issue 23).
    freeze_bn: bool | None = option(None, TRAINING, "Fine-tuning: the backbone's BatchNorm layers keep their pretrained statistics (eval "
                                                    "mode) while its weights train. Default: on for a pretrained backbone (batch "
                                                    "statistics of augmented crops cost 17-19 points on Office-31, docs/performance.md).")
    head_start: int | None = option(None, TRAINING, "Fine-tuning: steps fitting the bottleneck and head to the source on the frozen "
                                                    "backbone's cached features before the first fine-tuning step (not counted in "
                                                    "--iters). Default 0: measured no gain.", **COUNT)
    # auto: bf16 autocast on CUDA, fp32 elsewhere; bf16 | fp16 (CUDA, with loss scaling) | fp32.
    precision: str = option("auto", PERFORMANCE, "auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp16 (CUDA, with loss scaling) | "
                                                 "fp32.", choices=PRECISIONS)
    cdan_map: str = option("auto", METHOD, "cdan, cdan-e, asan: the discriminator's input f (x) g as the full product, randomized (1024 "
                                           "dims), or auto (full up to 4096 dims, randomized above).", choices=CDAN_MAPS)
    discriminator: str | None = option(None, METHOD, "batchnorm (TLlib's Linear-BN-ReLU) | dropout (the original code's "
                                                     "Linear-ReLU-Dropout). Default: dropout for "
                                                     f"{' and '.join(m for m, d in ALIGNMENT_TERMS.items() if d == 'dropout')}, batchnorm "
                                                     "otherwise.",
                                                     choices=DISCRIMINATORS)  # None: the method's (Method.reference_discriminator)
    # Weight of the adversarial loss (the mean over source and target rows). None: 2 with a
    # pretrained backbone, frozen (issue 22) or fine-tuned with its BatchNorm statistics kept
    # (issue 23); 1 for a backbone trained from random init (digits, issue 22). benchmarks/RESULTS.md.
    trade_off: float | None = option(None, METHOD, "Weight of the adversarial loss, a mean over source and target rows (TLlib's and the "
                                                   "original CDAN code's scale; the paper's Eq. 2 sums the two domains' means: 2). "
                                                   "Default: 2 with a pretrained backbone (--pretrained or --weights, frozen or "
                                                   "fine-tuned), 1 from random init.", **COUNT)
    bridge_g_weight: float = option(1.0, METHOD, "weight of the classifier bridge penalty (GVB's lambda).", methods=("gvb",), **COUNT)
    bridge_d_weight: float = option(1.0, METHOD, "weight of the discriminator bridge penalty (GVB's mu).", methods=("gvb",), **COUNT)
    rsl_weight: float = option(0.001, METHOD, "weight of the relevance spectral alignment loss.", methods=("asan",), **COUNT)
    rsl_k: int = option(11, METHOD, "how many of the smallest source singular values are shrunk.", methods=("asan",), **COUNT)
    target_loss_weight: float = option(1.0, METHOD, "weight of the losses on the target's predictions.", methods=TARGET_LOSS_NAMES, **COUNT)
    # mcc: softmax temperature. 2.0, not the MCC paper's and TLlib's 2.5: on Office-31 (frozen lite0,
    # 5 seeds) 2.0 read 2.4 and 4.0 points above 2.5, and 3.5 collapsed below source-only (issue 33).
    mcc_temperature: float = option(2.0, METHOD, "softmax temperature of the class-confusion matrix (the paper's 2.5 read 2-4 points lower "
                                                 "on Office-31; 3.5 collapsed).", methods=("mcc",), minimum=0, open_min=True,
                                                 range_hint="the default is 2.0")
    # A run taught by a teacher model (training/teacher.py): the student of --search-pick student, or any run.
    teacher: str | None = option(None, METHOD, "A golabels model (a run directory or model.safetensors of the same classes) whose "
                                               "predictions on the target, refined by the target's own clusters, the run learns from "
                                               "beside its recipe (the student of --search-pick student).", metavar="MODEL")
    teacher_weight: float = option(1.0, METHOD, "Weight of the cross-entropy to the teacher's refined labels (--teacher).", **COUNT)
    aad_neighbours: int = option(5, METHOD, "nearest target neighbours each target prediction is pulled toward.", methods=("aad",),
                                 **POSITIVE)
    aad_dispersion: float = option(1.0, METHOD, "weight of aad's term that pushes a batch's predictions apart.", methods=("aad",),
                                   **COUNT)
    bottleneck_dim: int = option(256, TRAINING, "Width of the bottleneck (Linear, BatchNorm, ReLU) between the backbone and the head.",
                                 **POSITIVE)
    disc_hidden: int = option(1024, METHOD, "Width of the discriminator's hidden layers.", **POSITIVE)
    image_size: int | None = option(None, DATA, "Square input size; default: the backbone's own.", minimum=8)
    min_crop: float = option(0.08, DATA, "Smallest area fraction of the random resized crop.", minimum=0, maximum=1, open_min=True)
    hflip: float = option(0.5, DATA, "Horizontal flip probability (0 for digits or text).", minimum=0, maximum=1)
    pretrained: bool = option(True, TRAINING, "Start from timm's pretrained weights (downloaded).")
    weights: str | None = option(None, TRAINING, "Local timm state dict (.safetensors or .pth) for the backbone.", metavar="FILE")
    eval_dir: str | None = option(None, EVALUATION, "Labeled target folder, evaluated at the end (and every --eval-every).", metavar="DIR")
    # validators (and --eval-dir) every N iterations; 0: at the end only. None: default_eval_every(),
    # a tenth of the run, for a curve in results.png at under 5 % of the run's time (issue 34).
    eval_every: int | None = option(None, EVALUATION, "Compute the validators (and --eval-dir accuracy) every N iterations; 0: at the end "
                                                      "only. Default: a tenth of --iters, at least 100 apart with --freeze-backbone and "
                                                      "1000 when the backbone trains (a curve in results.png for under 5% of the run's "
                                                      "time); 0 for shorter runs.", **COUNT)
    val_split: float = option(0.1, DATA, "Fraction of each source class held out for the src-acc and dev validators.", minimum=0,
                              maximum=1, open_max=True)
    val_target_images: int = option(2000, EVALUATION, "Target images the validators look at (a fixed random sample); 0: all.", **COUNT)
    select: str = option("last", EVALUATION,
                         "Which evaluated snapshot becomes model.safetensors: {choices} (the oracle; needs --eval-dir).",
                         choices=SELECT_CHOICES)
    # source: the shipped model's logits divided by the temperature that fits the held-out source
    # split best (calibration.py): its predictions unchanged, its confidences nearer its accuracy
    # (measured on labeled targets: benchmarks/RESULTS.md, "Calibration").
    calibrate: str = option("source", EVALUATION, "Confidences of the shipped model: source (temperature scaling on the held-out source "
                                                  "images, --val-split; the predictions do not change) | none.", choices=CALIBRATIONS)
    log_every: int = option(10, EVALUATION, "Write a metrics row every N iterations.", **POSITIVE)
    save_every: int = option(500, OUTPUT, "Save the full training state every N iterations (0: at the end only).", **COUNT)
    seed: int = option(0, TRAINING, "Random seed; same seed, same weights on CPU.", minimum=0, maximum=MAX_SEED, range_hint="any seed in "
                                                                                                                            "[0, 2^32) is "
                                                                                                                            "as good as "
                                                                                                                            "another")
    device: str = option("auto", PERFORMANCE, "{choices}. auto picks CUDA, then MPS, else CPU.", choices=DEVICES)
    workers: int | None = option(None, PERFORMANCE, "Loader processes; default min(8, CPUs - 1).", **COUNT)
    # None: training/threads.py decides when the run starts, and config.yaml holds the number
    # (0 when it is torch's default), so a resume or replay runs its steps as the run did.
    threads: int | None = option(None, PERFORMANCE, "CPU threads of the training steps; 0: torch's default (OMP_NUM_THREADS, else one per "
                                                    "core). Default: with --freeze-backbone on a CPU, the fewest threads within 5% of the "
                                                    "fastest on the head's step, measured when the run starts (a small step gains little "
                                                    "from more threads and loses several times its speed when other work shares the cores; "
                                                    "docs/performance.md); otherwise, and when OMP_NUM_THREADS is set, torch's default. "
                                                    "The number is written to config.yaml.", minimum=0, maximum=MAX_THREADS,
                                                    range_hint=f"at most {MAX_THREADS}: more threads than cores only slow a step")
    freeze_backbone: bool = option(False, TRAINING, "Keep the backbone fixed and train on its features, computed once and cached on disk "
                                                    "(minutes on a CPU).")
    cache_dir: str | None = option(None, PERFORMANCE, "Feature cache of --freeze-backbone; default $GOLABELS_CACHE or ~/.cache/golabels.",
                                   metavar="DIR")
    # batched (issue 43): the loader's per-image work is a copy, so it feeds a GPU step from a few
    # cores; per-image: the path of runs saved before it (run.BEFORE_OPTIONS), kept for them.
    augment: str = option("batched", PERFORMANCE, "batched: training images decoded once (in memory when they fit, else in a disk cache "
                                                  "beside the features), then cropped, flipped and normalized a whole batch at a time on "
                                                  "the device | per-image: decoded and augmented one image at a time with PIL in the "
                                                  "loader processes (how runs saved before this option trained).", choices=AUGMENTS)
    cache_images: bool = option(False, PERFORMANCE, "--augment per-image: keep decoded, resized training images in memory (when they fit).")
    compile: bool = option(False, PERFORMANCE, "torch.compile the classifier (faster steps after a slow first one).")
    deterministic: bool = option(False, PERFORMANCE, "On CUDA: deterministic cuDNN kernels, no autotuning (slower).")
    devices: int = option(1, PERFORMANCE, "Data-parallel processes on this machine (DDP via torch.distributed.run); --batch-size stays per "
                                          "process.", **POSITIVE)
    lr_scaling: str = option("none", PERFORMANCE, "How --lr follows the effective batch over processes: {choices}.", choices=LR_SCALINGS)
    sync_bn: bool = option(False, PERFORMANCE, "With several CUDA processes: BatchNorm statistics over all of them (SyncBatchNorm).")
    # None: decided by resolve_balancing once the source folder is counted (docs/label-shift.md).
    balance_source: bool | None = option(None, LABEL_SHIFT, "Draw every source class equally often. Default: on for an adversarial method "
                                                            "when the source is imbalanced above 3:1 (docs/label-shift.md).")
    balance_target: bool | None = option(None, LABEL_SHIFT, "Draw the target's classes equally often, by the model's current pseudo-labels "
                                                            "(refreshed every --refresh-every). Default: as --balance-source, in runs "
                                                            "longer than --refresh-every.")
    label_shift_weights: bool = option(False, LABEL_SHIFT, "Weight source images by the target's class prior, estimated from predictions, "
                                                           "over the source's (refreshed every --refresh-every). Measured unreliable: up "
                                                           "to 5 points above source-only on two long-tailed tasks, up to 15 below on "
                                                           "others (docs/label-shift.md).")
    refresh_every: int = option(100, LABEL_SHIFT, "Iterations between re-estimates of the target's pseudo-labels and class prior "
                                                  "(--balance-target, --label-shift-weights).", **POSITIVE)
    logger: str | None = option(None, OUTPUT, "tensorboard (event files in RUN/tensorboard) | mlflow (a run in $MLFLOW_TRACKING_URI): the "
                                              "metrics rows, the config and the final figures there too. Each needs its extra: pip install "
                                              "'golabels[tensorboard]'.", choices=LOGGERS)


    def resolved_lr_gamma(self) -> float:
        # TLlib's gamma = 1e-3 over 20000 iterations; scaling keeps the final lr at the same fraction.
        # A recipe with losses on the target's predictions keeps the reference decay whatever
        # --schedule says: at 1000 iterations the scaled one (lr at 0.10x by the end, not 0.59x)
        # cost MCC 5-11 points on Office-31, BNM up to 1 (benchmarks/RESULTS.md, issue 33).
        if self.lr_gamma is not None:
            return self.lr_gamma
        if self.schedule == "reference" or _has_target_losses(self.method):
            return REFERENCE_LR_GAMMA
        return 20.0 / max(self.iters, 1)

    def grl_horizon(self) -> int:
        """The iteration at which the reversal coefficient reaches 0.99 (with grl_alpha 10)."""
        return REFERENCE_HORIZON if self.schedule == "reference" else self.iters

    def resolved_workers(self) -> int:
        return self.workers if self.workers is not None else default_workers()


def default_workers() -> int:
    """Loader processes when not given: one core left to the main process, at most 8."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


def recipe_or_none(name: Any):
    try:
        return parse_recipe_name(name)
    except (ValueError, TypeError):  # TypeError: a value of another type (a YAML list), refused by validate()
        return None


def _has_target_losses(method: str | None) -> bool:
    recipe = recipe_or_none(method)
    return recipe is not None and bool(recipe.target_losses)


@dataclass
class RunOptions:
    """adapt's options that shape one invocation, not the training: never stored in config.yaml."""

    resume: str | None = option(None, OUTPUT, "Continue the interrupted run in this directory, with its own config; with --out, "
                                              "continue it (finished or not, --iters to lengthen it) in a new folder.", metavar="RUN")
    out: str | None = option(None, OUTPUT, "Run directory; default: runs/adapt/exp, exp2, ...", metavar="DIR")
    exist_ok: bool = option(False, OUTPUT, "Allow writing into an existing --out directory.")
    config: str | None = option(None, OUTPUT, "YAML file of options (keys are option names); flags given here win.", metavar="FILE")
    print_config: bool = option(False, OUTPUT, "Print the resolved config.yaml (what --config replays) and exit without training.")
    json: bool = option(False, OUTPUT, "Write one JSON document to stdout and nothing else.")
    quiet: bool = option(False, OUTPUT, "No progress or warnings on stderr; errors still shown.", short="-q")
    debug: bool = option(False, OUTPUT, "Show tracebacks and debug logs.")


FIELDS = {f.name: f for f in dataclasses.fields(AdaptConfig)}
RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunOptions)}


def options_of(part: str) -> tuple[str, ...]:
    """The config keys a --method part (gvb, mcc, ...) reads beyond the shared ones, in field order."""
    return tuple(name for name, f in FIELDS.items() if part in declaration(f).methods)


def option_defaults(keys: tuple[str, ...]) -> dict[str, Any]:
    """The declared defaults of these config keys."""
    return {key: FIELDS[key].default for key in keys}
