"""Reading, resolving and checking an AdaptConfig (declared in options.py): the YAML format of
`config.yaml`, the defaults that follow other options, and CLI overrides.

Keys in YAML are the CLI option names (`batch-size`; `batch_size` is accepted too). A run's
`config.yaml` holds the fully resolved training config, so `golabels adapt --config` replays it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Any

import yaml

# Torch-free on purpose: every value is checked before torch and timm load (choices.py).
from .choices import (ALIGNMENT_TERMS, AUTO_METHOD, ENSEMBLE, MAX_MEMBERS, SEARCH_RECIPES, STUDENT, STUDENT_RECIPE, parse_recipe_name,
                      parse_search_recipes, recipe_parts)
from .run_files import SEARCH_STUDENT, SEARCH_TEACHER
from .errors import InputError
from .options import (DEFAULT_FREEZE_BN, DEFAULT_HEAD_START, DEFAULT_SEARCH_PICK, FIELDS, FROZEN_BACKBONE_METHOD, FROZEN_ITERS,
                      PRETRAINED_TRADE_OFF, RUN_FIELDS, TRAINED_BACKBONE_METHOD, TRAINED_ITERS, AdaptConfig, declaration,
                      default_workers, option_name, recipe_or_none, value_kind)
from .yaml_files import read_yaml_mapping
from .trackers import check_logger
from .validators import NEED_HELD_OUT_SOURCE

DEFAULT_EVALUATIONS = 10  # a curve of ten points in results.png
# Iterations between evaluations at least, so that they cost at most about 5 % of the run: one
# evaluation (validators on 2000 target images and the held-out source, AdaBN) took as long as 4
# steps on cached features and 33 steps of a trained ResNet-18 (benchmarks/RESULTS.md, issue 34).
MIN_EVAL_INTERVAL = {"frozen": 100, "trained": 1000}


def default_eval_every(iters: int, freeze_backbone: bool) -> int:
    """--eval-every when not given: a tenth of the run, at least MIN_EVAL_INTERVAL iterations
    apart; 0 (at the end only) for a run shorter than two such intervals."""
    least = MIN_EVAL_INTERVAL["frozen" if freeze_backbone else "trained"]
    return max(iters // DEFAULT_EVALUATIONS, least) if iters >= 2 * least else 0


def default_cache_dir() -> Path:
    """--cache-dir when not given: $GOLABELS_CACHE, else ~/.cache/golabels."""
    return Path(os.environ.get("GOLABELS_CACHE") or Path.home() / ".cache" / "golabels").expanduser().absolute()


# Options that shape one invocation, not the training (options.RunOptions), that a config file may hold.
RUN_OPTIONS = tuple(name for name in RUN_FIELDS if name not in ("config", "print_config"))
# What may change when a run is resumed: nothing that changes the weights it will end with.
RESUME_OPTIONS = ("device", "workers", "save_every", "cache_dir", "cache_images", "devices", "logger")
# What may change on resume although it changes the weights: the run's length (never below the
# iteration reached), with the schedule that follows it (DERIVED) computed again for the new length.
RESUME_LENGTH = ("iters",)
COMMAND_LINE_ONLY = ("resume", "json", "quiet", "debug")
RUN_OPTION_TYPES = {name: RUN_FIELDS[name].type for name in RUN_OPTIONS}
PATH_FIELDS = ("source", "target", "weights", "eval_dir", "cache_dir")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into {field_name: value}; unknown keys are an error naming them."""
    path = Path(path)
    data = read_yaml_mapping(path)
    known = set(FIELDS) | set(RUN_OPTIONS)
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in COMMAND_LINE_ONLY:  # a config file is what to train; these say how one invocation runs
            flag = "--resume RUN" if name == "resume" else f"--{name}"
            raise InputError(f"{key!r} in {path} would be ignored: it is an option of the command line only",
                             f"remove it from the file and pass {flag} to golabels adapt")
        if name not in known:
            close = difflib.get_close_matches(option_name(name), [option_name(k) for k in known], 3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `golabels adapt --help`"
            raise InputError(f"unknown option {key!r} in {path}", hint)
        values[name] = value
    for name, kind in RUN_OPTION_TYPES.items():
        if values.get(name) is not None:
            _check_type(name, values[name], kind)
    # Relative paths in a config file are relative to the file, not to the current directory.
    for name in PATH_FIELDS:
        if isinstance(values.get(name), str) and not os.path.isabs(values[name]):
            values[name] = str((path.parent / values[name]).resolve())
    return values


# Defaults config.yaml holds resolved that follow other options: replayed with one of those options
# changed, the value is computed again (lr-gamma of the old --iters would decay the new run's lr
# on the old run's length), unless it is given too.
DERIVED = {"lr_gamma": ("iters", "schedule", "method"), "eval_every": ("iters", "freeze_backbone"), "image_size": ("backbone",)}


def recompute_derived(values: dict[str, Any], changed: set[str]) -> list[str]:
    """Clear in `values` (a --config file's, the command line's flags applied) each DERIVED value
    one of whose options is in `changed` and which is not itself; returns their option names."""
    cleared = [k for k, inputs in DERIVED.items() if k in values and k not in changed and changed & set(inputs)]
    for key in cleared:
        values[key] = None
    return [option_name(k) for k in cleared]


def follow_new_length(values: dict[str, Any]) -> list[str]:
    """`values`, a run's saved config, for a resume with another --iters: each DERIVED value that
    follows --iters and holds its default for the old length is cleared, to be computed again for
    the new one; a value the user gave (anything else) stays. Returns the cleared option names."""
    cleared = []
    for key, inputs in DERIVED.items():
        if "iters" not in inputs or values.get(key) is None:
            continue
        try:
            default = getattr(build_config({**values, key: None}), key)
        except InputError:  # the old config needs the value as it is
            continue
        if default == values[key]:
            values[key] = None
            cleared.append(option_name(key))
    return cleared


def build_config(values: dict[str, Any]) -> AdaptConfig:
    """An AdaptConfig from {field: value}, validated; paths made absolute so a replay finds them."""
    cfg = AdaptConfig(**{k: _number(v) if FIELDS[k].type.startswith("float") else v for k, v in values.items() if k in FIELDS})
    _check_types(cfg)
    if cfg.method is None:
        cfg.method = FROZEN_BACKBONE_METHOD if cfg.freeze_backbone else TRAINED_BACKBONE_METHOD
    if cfg.iters is None:
        cfg.iters = FROZEN_ITERS if cfg.freeze_backbone else TRAINED_ITERS
    if cfg.method == AUTO_METHOD:
        # What follows the recipe (the discriminator, --bn-stats, --lr-gamma) is resolved for each
        # candidate (search.candidate_config); a value given here applies to every candidate.
        cfg.search_recipes = cfg.search_recipes if cfg.search_recipes is not None else ",".join(SEARCH_RECIPES)
        cfg.search_pick = cfg.search_pick if cfg.search_pick is not None else DEFAULT_SEARCH_PICK
    method = recipe_or_none(cfg.method)  # an unknown one is left to validate(), after what it checks first
    for name in PATH_FIELDS:
        value = getattr(cfg, name)
        if value is not None:
            setattr(cfg, name, str(Path(value).expanduser().absolute()))
    if cfg.discriminator is None and method is not None:
        cfg.discriminator = ALIGNMENT_TERMS[method.alignment]
    pretrained = bool(cfg.pretrained or cfg.weights)
    if cfg.trade_off is None:
        cfg.trade_off = PRETRAINED_TRADE_OFF if pretrained else 1.0
    if cfg.bn_stats is None and method is not None:
        cfg.bn_stats = "train" if not method.uses_target or cfg.sync_bn else "target"
    fine_tuning_pretrained = not cfg.freeze_backbone and pretrained
    if cfg.freeze_bn is None:
        cfg.freeze_bn = fine_tuning_pretrained and DEFAULT_FREEZE_BN
    if cfg.head_start is None:
        cfg.head_start = DEFAULT_HEAD_START if fine_tuning_pretrained else 0
    if isinstance(cfg.iters, int) and cfg.iters > 0:  # a bad --iters is validate()'s to name
        if cfg.eval_every is None:
            cfg.eval_every = default_eval_every(cfg.iters, bool(cfg.freeze_backbone))
        if cfg.lr_gamma is None and method is not None:
            cfg.lr_gamma = cfg.resolved_lr_gamma()
    if cfg.workers is None:
        cfg.workers = default_workers()
    if cfg.cache_dir is None:
        cfg.cache_dir = str(default_cache_dir())
    validate(cfg)
    return cfg


def resolve_balancing(cfg: AdaptConfig, imbalanced: bool) -> list[str]:
    """--balance-source and --balance-target left unset: on for an adversarial method when the
    data report finds the source imbalanced (largest / smallest class above IMBALANCE_WARNING, 3).

    Above 10:1 adapting without them lost 3 to 59 points to source-only and CDAN+E with them never
    did; with CDAN+E they added 20 points at 9.5:1, 1 to 3.5 at 3.1:1, 3.9:1 and 5.1:1 (the last
    with no label shift); below 3:1 they cost up to 1.6 (USPS -> MNIST, USPS at 2.2:1).
    source-only keeps the source's own frequencies: it is the baseline an adapted run is compared
    with. A run too short to reach its first target estimate (at --refresh-every) draws the target
    as it is, where asking for --balance-target explicitly is refused. Returns the flags it turned
    on."""
    if cfg.method == AUTO_METHOD:
        return []  # each candidate decides for its own recipe
    recipe = recipe_or_none(cfg.method)
    on = imbalanced and recipe is not None and recipe.adversarial
    chosen = []
    if cfg.balance_source is None:
        cfg.balance_source = on
        if on:
            chosen.append("--balance-source")
    if cfg.balance_target is None:
        cfg.balance_target = on and cfg.refresh_every < cfg.iters
        if cfg.balance_target:
            chosen.append("--balance-target")
    return chosen


def _check_search(cfg: AdaptConfig) -> None:
    """--method auto and its options: recipes that can be searched, on the cached features."""
    if cfg.method != AUTO_METHOD:
        for name in ("search_recipes", "search_pick"):
            if getattr(cfg, name) is not None:
                raise InputError(f"--{option_name(name)} applies to --method {AUTO_METHOD}, and this run's --method is {cfg.method}",
                                 f"add --method {AUTO_METHOD}, or leave --{option_name(name)} out")
        return
    parts = [part.strip() for part in cfg.search_recipes.split(",")]
    for part in parts:
        if part != AUTO_METHOD:
            _check_recipe(part, "--search-recipes")
    try:
        recipes = parse_search_recipes(cfg.search_recipes)
    except ValueError as exc:
        raise InputError(str(exc), "e.g. --search-recipes cdan-e+bnm,mcc,source-only") from None
    adapted = [r for r in recipes if parse_recipe_name(r).uses_target]
    if cfg.search_pick in (ENSEMBLE, STUDENT) and len(adapted) > MAX_MEMBERS:
        raise InputError(f"--search-pick {cfg.search_pick} holds the adapted candidates' heads in one model file, which takes "
                         f"{MAX_MEMBERS} at most, and --search-recipes names {len(adapted)}",
                         f"name {MAX_MEMBERS} adapted recipes or fewer, or pick one candidate with --search-pick agreement")
    if not cfg.freeze_backbone:
        raise InputError(f"--method {AUTO_METHOD} trains every candidate recipe on the frozen backbone's cached features, "
                         "and this run trains the backbone", "add --freeze-backbone, or choose one --method")
    if cfg.devices > 1:
        raise InputError(f"--method {AUTO_METHOD} trains its candidates one after another in one process, on cached features",
                         "leave --devices out: a step on cached features is too small to share")


def _check_recipe(name: str, flag: str = "--method") -> None:
    """--method: one alignment term and/or losses on the target's predictions, joined by "+"."""
    try:
        parse_recipe_name(name)
    except ValueError as exc:
        bad = next((p for p in name.split("+") if p.strip() not in recipe_parts()), None)
        if bad is not None:
            close = difflib.get_close_matches(bad.strip(), recipe_parts(), 2, 0.4)
            hint = f"did you mean {' or '.join(close)}?" if close else f"choose from {', '.join(recipe_parts())}, joined by +"
            what = "method" if flag == "--method" else f"recipe in {flag}"
            raise InputError(f"unknown {what} {bad.strip()!r}",
                             hint if close or flag != "--method" else f"{hint}, or {AUTO_METHOD}") from None
        raise InputError(str(exc) if flag == "--method" else f"{flag}: {exc}",
                         "e.g. --method cdan-e, --method mcc, --method cdan-e+mcc or --method auto") from None


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """InputError unless `value` is one of `choices`, with a did-you-mean hint."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, 2, 0.4)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(choices)}"
        raise InputError(f"unknown {option_name(name)} {value!r}", hint)


_KINDS = {"str": "a string", "int": "an integer", "float": "a finite number", "bool": "true or false"}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Strictly: a bool is not an integer, "false" is not a bool, a number must be finite."""
    kind, optional = value_kind(annotation)
    if value is None and optional:
        return
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise InputError(f"{option_name(name)} must be {_KINDS[kind]}, got {shown}",
                         "see `golabels adapt --help` for each option's values")


# What one training step must hold at least: the input batch times a factor well below any CNN's
# activations (a ResNet-50 keeps about 300 times its input for the backward pass).
MIN_ACTIVATION_FACTOR = 16


def check_resources(cfg: AdaptConfig, input_size: tuple[int, int] | None = None) -> None:
    """Refuse an image size and batch whose one training step cannot fit in this machine's memory:
    checked when the options are read (with --image-size given) and again once the backbone gives
    its own `input_size` (height, width). (--freeze-backbone's extraction passes 2 x --batch-size
    images at once: the same bound holds.)"""
    height, width = input_size or (cfg.image_size, cfg.image_size)
    if height is None:
        return
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    need = MIN_ACTIVATION_FACTOR * 2 * cfg.batch_size * 3 * height * width * 4
    if need > memory:
        size = f"--image-size {cfg.image_size}" if cfg.image_size is not None else f"the backbone's input size {height}x{width}"
        raise InputError(f"{size} with --batch-size {cfg.batch_size} needs at least {need / 2**30:,.0f} GiB "
                         f"for one training step, and this machine has {memory / 2**30:,.0f} GiB",
                         "lower --image-size (most backbones train at 224-384) or --batch-size")


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-3 (no dot) as a string: accept what Python reads as a number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_types(cfg: AdaptConfig) -> None:
    for f in dataclasses.fields(cfg):
        _check_type(f.name, getattr(cfg, f.name), f.type)


def validate(cfg: AdaptConfig) -> None:
    _check_types(cfg)
    if not cfg.source or not cfg.target:
        raise InputError("adapt needs a SOURCE and a TARGET folder", "golabels adapt SOURCE TARGET, or --config FILE")
    if cfg.method != AUTO_METHOD:
        _check_recipe(cfg.method)
    for name, f in FIELDS.items():  # None is left to the checks below: each field's default says when it may be
        spec, value = declaration(f), getattr(cfg, name)
        if spec.choices and value is not None:
            check_choice(name, value, spec.choices)
        if value is not None and not isinstance(value, str) and not spec.in_range(value):  # types are checked above
            raise InputError(f"--{option_name(name)} must be {spec.range_text(value_kind(f.type)[0])}, got {value!r}", spec.range_hint)
    if cfg.bn_stats == "target" and cfg.sync_bn:
        raise InputError("--bn-stats target re-estimates BatchNorm on one process, where --sync-bn's layers would wait for the others",
                         "use --bn-stats train with --sync-bn")
    if cfg.logger is not None:
        check_logger(cfg.logger)
    for name in ("freeze_bn", "head_start"):
        if getattr(cfg, name) and cfg.freeze_backbone:
            raise InputError(f"--{option_name(name)} applies to fine-tuning, and --freeze-backbone never trains the backbone",
                             f"leave --{option_name(name)} out with --freeze-backbone")
    if (cfg.head_start or cfg.freeze_bn) and not (cfg.pretrained or cfg.weights):
        name = "head-start" if cfg.head_start else "freeze-bn"
        raise InputError(f"--{name} keeps what a pretrained backbone learned, and this one is randomly initialized",
                         f"pass --weights or --pretrained, or leave --{name} out")
    if cfg.forward == "per-domain" and cfg.devices > 1:
        raise InputError("forward: per-domain runs two forward passes a step, which DDP's gradient hooks do not allow",
                         "use forward: joint with --devices above 1")
    check_resources(cfg)
    if cfg.select != "last" and not cfg.eval_every:
        raise InputError(f"--select {cfg.select} chooses among the snapshots evaluated every --eval-every iterations, and there are none",
                         "add --eval-every N (e.g. a tenth of --iters)")
    if cfg.select == "target-acc" and not cfg.eval_dir:
        raise InputError("--select target-acc needs target labels", "pass --eval-dir LABELED_TARGET, or select by a validator")
    if (cfg.balance_target or cfg.label_shift_weights) and cfg.refresh_every >= cfg.iters:
        flag = "--balance-target" if cfg.balance_target else "--label-shift-weights"
        raise InputError(f"{flag} acts from the first target estimate, at iteration --refresh-every {cfg.refresh_every}, "
                         f"and the run has {cfg.iters} iterations", "lower --refresh-every")
    _check_search(cfg)
    if cfg.balance_target and cfg.method != AUTO_METHOD and not parse_recipe_name(cfg.method).uses_target:
        raise InputError("--balance-target draws the target batches, and --method source-only trains on none",
                         "use a --method that trains on the target, or leave --balance-target out")
    if cfg.teacher is not None:
        if cfg.method == AUTO_METHOD:
            raise InputError(f"--teacher teaches one run, and --method {AUTO_METHOD} trains several",
                             "use --search-pick student, whose student the search's own ensemble teaches, or a --method of one recipe")
        if not parse_recipe_name(cfg.method).uses_target:
            raise InputError(f"--teacher gives labels of the target images, and --method {cfg.method} trains on none",
                             "use a --method that trains on the target, or leave --teacher out")
    if cfg.select in NEED_HELD_OUT_SOURCE and not cfg.val_split:
        raise InputError(f"--select {cfg.select} needs held-out source images", "use --val-split above 0 (default 0.1)")


# What config.yaml cannot hold resolved: it is decided when the run starts, on the machine it runs on.
RESOLVED_AT_RUN_TIME = ("# golabels adapt --config FILE replays this run. Every value is resolved except, when the run starts:\n"
                        "#   device auto: CUDA if present, then MPS, else the CPU; precision auto: bf16 autocast on CUDA, fp32 elsewhere\n")


def candidate_config(cfg: AdaptConfig, recipe: str) -> AdaptConfig:
    """The config of one candidate of --method auto: the search's options with --method RECIPE,
    everything that follows the recipe (discriminator, --bn-stats, --lr-gamma, balancing) resolved
    for it as a run of that recipe would resolve it."""
    values = {**dataclasses.asdict(cfg), "method": recipe, "search_recipes": None, "search_pick": None}
    parsed = parse_recipe_name(recipe)
    if not parsed.uses_target:
        values["balance_target"] = None  # source-only draws no target batch to balance
    if not parsed.adversarial:
        values["domain_labels"] = "fixed"  # --domain-labels acts on a discriminator, which this one has none of
    return build_config(values)


def _candidate_lines(cfg: AdaptConfig) -> list[str]:
    """What each candidate of --method auto resolves for its recipe (balancing: from the source folder)."""
    lines = []
    for recipe in parse_search_recipes(cfg.search_recipes):
        c = candidate_config(cfg, recipe)
        parsed = parse_recipe_name(recipe)
        disc = f"discriminator {c.discriminator}, trade-off {c.trade_off:g}" if parsed.adversarial else "no discriminator"
        lines.append(f"{recipe}: {disc}, lr-gamma {c.lr_gamma:g}, bn-stats {c.bn_stats}")
    if cfg.search_pick == STUDENT:
        c = candidate_config(cfg, STUDENT_RECIPE)
        lines.append(f"then {STUDENT}: a run of {STUDENT_RECIPE} in RUN/{SEARCH_STUDENT}, taught by the adapted candidates' ensemble "
                     f"(RUN/{SEARCH_TEACHER}, teacher-weight {c.teacher_weight:g}), lr-gamma {c.lr_gamma:g}, bn-stats {c.bn_stats}")
    return lines


def to_yaml(cfg: AdaptConfig) -> str:
    data = {option_name(k): v for k, v in dataclasses.asdict(cfg).items()}
    unresolved = [f"{option_name(k)} null: decided from the source folder's class counts" for k in ("balance_source", "balance_target")
                  if data[option_name(k)] is None and cfg.method != AUTO_METHOD]
    if cfg.method == AUTO_METHOD:
        unresolved.append(f"method {AUTO_METHOD}: each of search-recipes runs in RUN/candidates/<recipe> with these options; what is null "
                          "here is resolved for each recipe as --method <recipe> would:")
        unresolved += [f"  {line}" for line in _candidate_lines(cfg)]
    return RESOLVED_AT_RUN_TIME + "".join(f"#   {line}\n" for line in unresolved) + yaml.safe_dump(data, sort_keys=False)
