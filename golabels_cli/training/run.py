"""The two ways into a training run: adapt() starts one in a new run directory, resume() continues
an interrupted one from its checkpoint to the same final weights."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..choices import parse_recipe_name
from ..checkpoint import load_checkpoint
from ..files import atomic_path, check_run_dir, claim_run_dir, one_writer, remove_stale_temporaries
from .. import run_files
from ..config import DERIVED, FIELDS, RESUME_LENGTH, RESUME_OPTIONS, AdaptConfig, build_config, follow_new_length, option_name, to_yaml
from ..yaml_files import read_config_fields
from ..device import pick_device
from ..distributed import env_rank, setup, shared, teardown
from ..errors import InputError, reason
from ..images import require_regular
from ..progress import no_events
from .build import build
from .checkpoint_schema import check_checkpoint_state, check_optimizer_state, check_selected_model
from .loop import train
from .run_dir import CHECKPOINT_FORMAT, set_aside_earlier_run, set_aside_metrics, set_aside_stopped_export, write
from .signals import stop_at_once
from .state import LoopState, Progress, Training

log = logging.getLogger("golabels")

# What a checkpoint's config lacks when an earlier golabels wrote it, and the value that run
# trained with: runs saved before --val-split existed trained on the whole source folder, before
# the balancing options existed on the folders as they are, before --schedule, --discriminator and
# --cdan-map with the scaled schedule, BatchNorm discriminators and CDAN's map randomized above
# 4096 dimensions (whose buffers their checkpoint holds), and before --freeze-bn and --head-start
# with the backbone's batch statistics and no head start, before --augment with per-image augmentation,
# before --threads with torch's default count, and before --calibrate with uncalibrated confidences.
BEFORE_OPTIONS = {"val_split": 0.0, "balance_source": False, "balance_target": False, "schedule": "scaled", "discriminator": "batchnorm",
                  "bn_stats": "train", "freeze_bn": False, "head_start": 0, "augment": "per-image", "threads": 0, "calibrate": "none"}


def adapt(cfg: AdaptConfig, out: str | Path | None = None, exist_ok: bool = False, progress: Progress = no_events) -> dict[str, Any]:
    """Train on cfg.source (labeled) and cfg.target (unlabeled); returns the summary.

    Every input is checked before the run directory is created, so bad input leaves nothing behind.
    """
    recipe = parse_recipe_name(cfg.method)
    if cfg.domain_labels != "fixed" and not recipe.adversarial:
        # Refused for new runs only: a checkpoint saved before this check still resumes.
        raise InputError(f"--domain-labels {cfg.domain_labels} sets the targets of a discriminator, and --method {cfg.method} has none",
                         "leave --domain-labels out"
                         + (f", or add an alignment term (--method cdan-e+{cfg.method})" if recipe.uses_target else ""))
    if env_rank() == 0:
        check_run_dir(out, exist_ok, {"SOURCE": cfg.source, "TARGET": cfg.target, "--eval-dir": cfg.eval_dir})
    device = pick_device(cfg.device)
    d = setup(device.type)
    try:
        with stop_at_once("nothing was written", "start the run again"):
            t = _shared(build, cfg, d, progress if d.main else no_events, device)
        with contextlib.ExitStack() as writing:
            run_dir = None
            if d.main:  # only rank 0 writes
                run_dir = claim_run_dir(out, exist_ok)
                writing.enter_context(one_writer(run_dir))
                if exist_ok and out is not None:
                    set_aside_earlier_run(run_dir)
                write(run_dir / run_files.CONFIG, to_yaml(t.cfg), None)
                write(run_dir / run_files.METRICS, "", None)
            return train(t, run_dir, LoopState(), progress)
    finally:
        teardown()


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, progress: Progress = no_events) -> dict[str, Any]:
    """Continue an interrupted run from its checkpoint.pt to its configured iteration count;
    `overrides` may change what leaves the weights as they would be (config.RESUME_OPTIONS)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist", "pass the folder of the interrupted run")
    with contextlib.ExitStack() as writing:
        if env_rank() == 0:
            writing.enter_context(one_writer(run_dir))  # before anything is read: a run still training is not resumed under it
        return _resume(run_dir, overrides, progress)


def continued_copy(run_dir: Path, out: str | Path) -> Path:
    """`adapt --resume RUN --out NEW`: RUN's training state (config.yaml, checkpoint.pt,
    metrics.jsonl) copied into NEW, a new or empty folder, to continue there: a finished run made
    longer (`--iters`) keeps its own model, and an unfinished one its own state. Checked as a
    resume checks it before anything is copied."""
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist", "pass the folder of the run to continue")
    path, ckpt = _own_checkpoint(run_dir)
    check_checkpoint_state(ckpt, path)
    new = claim_run_dir(out, exist_ok=False)
    try:
        with one_writer(new):
            for name in (run_files.CHECKPOINT, run_files.METRICS, run_files.CONFIG):  # config.yaml last: the claim's own name
                if (run_dir / name).is_file():
                    with atomic_path(new / name) as tmp:
                        shutil.copyfile(run_dir / name, tmp)
    except OSError as exc:
        raise InputError(f"cannot copy {run_dir}'s training state into {new} ({reason(exc)})", "pass another --out") from exc
    log.info("continuing %s (iteration %d of %s) in %s; %s is left as it is", run_dir, ckpt["loop"]["iteration"],
             ckpt["config"].get("iters"), new, run_dir)
    return new


def _own_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The run's checkpoint.pt, read as untrusted input, its run files checked to be the run's own."""
    path = run_dir / run_files.CHECKPOINT
    if not os.path.lexists(path):
        raise InputError(f"{run_dir} holds no {run_files.CHECKPOINT}", "the run stopped before its first save; start it again")
    check_run_files(run_dir)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a golabels training checkpoint", "pass the run directory of a golabels adapt run")
    return path, ckpt


def _resume(run_dir: Path, overrides: dict[str, Any] | None, progress: Progress) -> dict[str, Any]:
    path, ckpt = _own_checkpoint(run_dir)
    cfg, done = _checked(ckpt, run_dir, path, overrides or {})
    if done >= cfg.iters and (run_dir / run_files.MODEL).is_file() and (run_dir / run_files.SUMMARY).is_file():
        raise InputError(f"run {run_dir} is already complete ({done} of {cfg.iters} iterations)", "evaluate or export it, or start a new "
                                                                                                  "run")
    # (done == iters without the model: the final writes failed, and resuming makes them again.)
    device = pick_device(cfg.device)
    d = setup(device.type)
    try:
        with stop_at_once(f"the run is as it was (iteration {done})", f"resume with: golabels adapt --resume {run_dir}"):
            t = _shared(build, cfg, d, progress if d.main else no_events, device)
        state = _restore(t, run_dir, ckpt, path)
        if not t.dist.main:
            return train(t, None, state, no_events, rng=ckpt["rng"])
        remove_stale_temporaries(run_dir)
        set_aside_metrics(run_dir / run_files.METRICS, state.iteration)
        set_aside_stopped_export(run_dir)
        if ckpt["config"].get("iters") != t.cfg.iters:
            # --iters changed: config.yaml says the length the run now has (a replay makes this run)
            log.info("resuming at iteration %d with --iters %d (was %s): the schedule follows the new length", done, t.cfg.iters,
                     ckpt["config"].get("iters"))
            if read_config_fields(run_dir / run_files.CONFIG).get("iters") != t.cfg.iters:
                write(run_dir / run_files.CONFIG, to_yaml(t.cfg), done)
        return train(t, run_dir, state, progress, rng=ckpt["rng"])
    finally:
        teardown()


def check_run_files(run_dir: Path) -> None:
    """Every file of the run that resume reads or appends to is a regular file of its own: a FIFO
    would block the run for ever (opening metrics.jsonl to append waits for a reader), a link
    would have the run write into a file outside its folder. Checked before anything changes."""
    for name in run_files.RUN_FILES:
        path = run_dir / name
        if not os.path.lexists(path):
            continue
        hint = "golabels writes its run files itself, as regular files: restore the run's own file, or start a new run"
        if path.is_symlink():
            raise InputError(f"{path} is a link", hint)
        require_regular(path, "run file", hint)


# config.yaml of a run written before these were resolved when it started holds null for them,
# where its checkpoint holds the value the run trained with.
RESOLVED_IN_BUILD = (*DERIVED, "balance_source", "balance_target")


def _checked(ckpt: dict[str, Any], run_dir: Path, path: Path, overrides: dict[str, Any]) -> tuple[AdaptConfig, int]:
    """The run's config and the checkpoint's iteration, once both are known to be the run's own:
    read before anything in the run directory changes."""
    old = {**BEFORE_OPTIONS, "cdan_map": "randomized" if "rf" in (ckpt.get("multilinear") or {}) else "full"}
    config_yaml = run_dir / run_files.CONFIG
    try:
        saved, done = ckpt["config"], ckpt["loop"]["iteration"]
        values = {**old, **saved}
        declared_iters = read_config_fields(config_yaml).get("iters") if config_yaml.is_file() else None
        if "iters" not in overrides and isinstance(declared_iters, int) and declared_iters != values.get("iters"):
            # a resume that changed the length writes config.yaml first: stopped before its next
            # save, the checkpoint still says the old length, and config.yaml the one asked for
            overrides = {**overrides, "iters": declared_iters}
        if "iters" in overrides and overrides["iters"] != values.get("iters"):
            _check_new_length(run_dir, overrides["iters"], done, values.get("iters"))
            follow_new_length(values)  # the schedule follows the new length, unless the run was given its own
        cfg = build_config({**values, **overrides})
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({reason(exc)})", "start the run again") from exc
    if not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= cfg.iters:
        raise InputError(f"{path} is damaged: it says it was saved at iteration {done!r}, and the run has {cfg.iters}",
                         "start the run again")
    check_checkpoint_state(ckpt, path)
    if not config_yaml.is_file():
        raise InputError(f"{run_dir} holds no {run_files.CONFIG} beside its checkpoint", "restore it from a backup, or start a new run")
    declared = read_config_fields(config_yaml)
    # A resume that changed the length rewrites config.yaml before its next save: either may be the newer.
    length_changed = declared.get("iters") != saved.get("iters")
    for key in sorted(set(saved) & set(declared)):  # a key one of them lacks: written by another golabels, no contradiction
        if key in RESUME_OPTIONS or key in RESUME_LENGTH or (length_changed and key in DERIVED) or key not in FIELDS:
            continue
        ours, theirs = declared[key], saved[key]
        if ours != theirs and not (ours is None and key in RESOLVED_IN_BUILD):
            raise InputError(f"{config_yaml} says {option_name(key)}: {shown_value(ours)} and {path.name} says {shown_value(theirs)}: "
                             "they are not of the same run", "restore the run's own config.yaml, or start a new run")
    return cfg, done


def _check_new_length(run_dir: Path, iters: Any, done: Any, before: Any) -> None:
    """--iters on resume: not below the iteration reached, and never for a finished run (its
    model.safetensors and summary.json would be overwritten)."""
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        return  # build_config says what is wrong with it
    if isinstance(done, int) and iters < done:
        raise InputError(f"--iters {iters} is below the iteration the run reached ({done} of {before})",
                         f"pass --iters {done} or more to resume {run_dir}")
    if (run_dir / run_files.MODEL).is_file() and (run_dir / run_files.SUMMARY).is_file():
        raise InputError(f"run {run_dir} is complete ({before} iterations): a longer run would overwrite its model",
                         f"continue it in a new folder: golabels adapt --resume {run_dir} --iters {iters} --out NEW")


def shown_value(value: Any) -> str:
    """A config value as an error message shows it: YAML's spelling, at most 60 characters."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shared(fn: Callable, *args):
    """Errors every rank meets alike (the same inputs, the same checks): rank 0 reports them."""
    try:
        return fn(*args)
    except InputError as exc:
        raise shared(exc)


def _restore_teacher(t: Training, ckpt: dict[str, Any], path: Path) -> None:
    """A taught run learns from the labels it started with: the checkpoint's, whatever the
    teacher's file gives now."""
    labels = ckpt["teacher_labels"]
    if not isinstance(labels, torch.Tensor) or labels.shape != t.objective.teacher.shape:
        raise InputError(f"{path} is damaged: its teacher_labels do not fit the target", "start the run again")
    if not torch.equal(labels.to(t.objective.teacher.device), t.objective.teacher):
        log.warning("the teacher %s gives other labels than when the run started: resuming with the labels it started with",
                    t.cfg.teacher)
    t.objective.teacher.copy_(labels)
    t.teacher.update(json.loads(ckpt["teacher"]))


def _restore(t: Training, run_dir: Path, ckpt: dict[str, Any], path: Path) -> LoopState:
    """The checkpoint's weights, optimizer and loop state into the freshly built run."""
    if t.source.classes != ckpt["classes"]:
        raise InputError(f"the source folder's classes changed since {run_dir} started", "restore the folder, or start a new run")
    if t.fingerprint != ckpt["fingerprint"]:
        log.warning("the source or target images changed since the run started: resuming anyway, "
                    "but the result will differ from an uninterrupted run")
    try:
        t.model.load_state_dict(ckpt["model"])
        if t.disc is not None:
            t.disc.load_state_dict(ckpt["discriminator"])
        if t.multilinear is not None:
            t.multilinear.load_state_dict(ckpt["multilinear"])
        if t.objective.bank is not None:
            t.objective.bank.load_state_dict(ckpt["target_bank"])
        if t.objective.teacher is not None:
            _restore_teacher(t, ckpt, path)
        built = [group["base_lr"] for group in t.optimizer.param_groups]
        t.optimizer.load_state_dict(ckpt["optimizer"])
        check_optimizer_state(t.optimizer, path)
        for group, base_lr in zip(t.optimizer.param_groups, built):
            # checkpoints written before golabels stored base_lr: the config gives the same value
            group.setdefault("base_lr", base_lr)
            group["initial_lr"] = group["base_lr"] * t.lr_scale
        check_selected_model(ckpt.get("selected_model") or {}, t.model, path)
        if t.grad_scaler is not None and ckpt.get("grad_scaler"):
            t.grad_scaler.load_state_dict(ckpt["grad_scaler"])
        state = LoopState(**ckpt["loop"], selected_weights=ckpt.get("selected_model") or None)
        if state.pseudo_labels is not None and len(state.pseudo_labels) != len(t.target):
            state.pseudo_labels = None  # of another target folder: --balance-target draws uniformly until the next estimate
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise InputError(f"{path} does not fit the run's own config ({reason(exc)})", "it is damaged; start the run again") from exc
    return state
