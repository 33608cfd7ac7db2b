"""What a run writes: the checkpoint (the whole training state), the metrics file, the summary and
its figure, each atomically and with a failure that says what is kept. (The signals that ask a run
to stop are signals.py's.)"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable

from .. import __version__
from .. import run_files
from ..files import atomic_path, torch_save_atomic, write_text_atomic
from ..errors import InputError, RunError, plural, reason
from ..formats import json_text
from .runtime import environment, rng_state
from .state import LoopState, Training
from .threads import threads_used

log = logging.getLogger("golabels")
CHECKPOINT_FORMAT = "golabels-checkpoint/1"


def checkpoint(t: Training, state: LoopState) -> dict[str, Any]:
    """The whole training state, in types torch.load(weights_only=True) accepts."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": dataclasses.asdict(t.cfg),
        "classes": t.source.classes,
        "fingerprint": t.fingerprint,
        "model": t.model.state_dict(),
        "discriminator": t.disc.state_dict() if t.disc is not None else {},
        "multilinear": t.multilinear.state_dict() if t.multilinear is not None else {},
        **({"target_bank": t.objective.bank.state_dict()} if t.objective.bank is not None else {}),
        **({"teacher_labels": t.objective.teacher, "teacher": json_text(t.teacher)} if t.objective.teacher is not None else {}),
        "selected_model": state.selected_weights or {},
        "optimizer": t.optimizer.state_dict(),
        **({"grad_scaler": t.grad_scaler.state_dict()} if t.grad_scaler is not None else {}),
        "rng": rng_state(t.device),
        "loop": state.saved(),
    }


def summary(t: Training, run_dir: Path, state: LoopState, seconds: float, session: tuple[int, float]) -> dict[str, Any]:
    """summary.json's figures. `session`: the iteration this process started at (> 0 when resumed),
    its own seconds, and of those the training steps' alone."""
    cfg = t.cfg
    first, session_seconds, step_seconds = session
    images_per_step = cfg.batch_size * (2 if t.recipe.uses_target else 1) * t.dist.world
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
        "eval_seconds": round(state.eval_seconds, 2),  # of those, evaluating (--eval-every and the end)
        # this session's throughput: a resumed run's earlier sessions may have run elsewhere
        "images_per_s": round((cfg.iters - first) * images_per_step / max(session_seconds, 1e-9), 1),
        # over the training steps alone (their batches' loading included; evaluating and checkpoints not):
        # what throughput.py's step figures measure
        "train_images_per_s": round((cfg.iters - first) * images_per_step / max(step_seconds, 1e-9), 1),
        "resumed_at": first or None,
        "session_seconds": round(session_seconds, 2),
        "step_seconds": round(step_seconds, 2),
        "threads": threads_used(cfg.threads),  # of the training steps
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
        "final": {k: state.last_row.get(k) for k in ("loss_cls", "loss_adv", "loss_target", "loss_teacher", "disc_acc", "relabeled_src",
                                                     "relabeled_tgt", "adv_grad_norm")},
        # target_acc is that of model.safetensors, the selected snapshot (the oracle: --eval-dir's labels)
        "target_acc": selected.get("target_acc"),
        "target_mean_class_acc": selected.get("target_mean_class_acc"),
        "selected": {"by": cfg.select, "iter": state.selected.get("iter"), "value": state.selected.get("value")},
        "evals": state.evals,
        "target_estimate": ({**state.target_estimate, "class_weights": state.class_weights if cfg.label_shift_weights else None}
                            if state.target_estimate else None),
        "features": {role: {"cached": f.cached, "computed": f.computed} for role, f in t.features.items()} if t.features else None,
        **({"teacher": t.teacher} if t.teacher else {}),
    }


def results_files(run_dir: Path, summary: dict[str, Any], config: dict[str, Any], rows: list[dict[str, Any]] | None,
                  mosaic: Callable[[], list] | None = None) -> dict[str, str | None]:
    """What the run leaves for a reader beside its model: results.csv (its metrics rows as a
    table) and results.png (with matplotlib), from the rows in memory (None: they could not be
    read back at a resume), and target-mosaic.png (`mosaic()`'s target images with their
    predicted labels). Each that cannot be written costs a warning naming it, not the run, nor the
    others; returns the names written (None for each that was not)."""
    from ..figures import write_target_mosaic
    from ..report import RunRecord
    from ..results import write_results_csv, write_results_figure

    def attempt(name: str, write: Callable[[], Path | None]) -> str | None:
        try:
            path = write()
        except Exception as exc:  # noqa: BLE001 - a plotting library's or a disk's failure of any kind
            log.warning("%s not written (%s)", name, reason(exc))
            return None
        return path.name if path is not None else None

    record = RunRecord(run_dir, config, rows, summary) if rows is not None else None
    title = f"target images and their predicted labels, the least confident first: {run_dir.name}"
    return {"results_csv": attempt(run_files.RESULTS_CSV, lambda: write_results_csv(record)) if record else None,
            "results_figure": attempt(run_files.RESULTS_FIGURE, lambda: write_results_figure(record)) if record else None,
            "target_mosaic": attempt(run_files.TARGET_MOSAIC, lambda: write_target_mosaic(mosaic(), run_dir / run_files.TARGET_MOSAIC,
                                                                                          title)) if mosaic else None}


def kept(saved_at: int | None, run_dir: Path) -> str:
    """The hint of a failed write: what is kept, and how to go on."""
    if saved_at:
        return f"the checkpoint of iteration {saved_at} is kept; fix it, then: golabels adapt --resume {run_dir}"
    return "fix it and start the run again"


def write_failure(exc: BaseException, folder: Path) -> str:
    """Why a write failed, in words: torch.save reports a full disk as `[enforce fail at
    inline_container.cc] unexpected pos`, safetensors as its own error type."""
    try:
        full = shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        full = False
    if full:
        return "no space left on the device"
    return reason(exc) if isinstance(exc, OSError) else f"the write failed: {reason(exc)}"


def save_checkpoint(state: dict[str, Any], path: Path, saved_at: int | None, run_dir: Path) -> None:
    try:
        torch_save_atomic(state, path)
    except (OSError, RuntimeError) as exc:  # torch.save's writer raises RuntimeError on a short write
        raise RunError(f"cannot save the training state to {path} ({write_failure(exc, run_dir)})", kept(saved_at, run_dir)) from exc


def write(path: Path, text: str, saved_at: int | None) -> None:
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise RunError(f"cannot write {path} ({write_failure(exc, path.parent)})", kept(saved_at, path.parent)) from exc


def open_metrics(path: Path) -> IO[str]:
    try:
        return open(path, "a")
    except OSError as exc:
        raise RunError(f"cannot write {path} ({reason(exc)})", "check the folder's permissions and free space") from exc


def append(metrics: IO[str], row: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Log `row`; returns it as a reader of the file gets it back (lists for tuples, ...)."""
    line = json.dumps(row)
    try:
        metrics.write(line + "\n")
        metrics.flush()
    except OSError as exc:
        raise RunError(f"cannot write {run_dir / run_files.METRICS} ({reason(exc)})", "check the folder's free space") from exc
    return json.loads(line)


def logged_rows(run_dir: Path) -> list[dict[str, Any]] | None:
    """The rows a resumed run's earlier sessions logged (metrics.jsonl once its later rows are set
    aside), for its results.csv and results.png; None, with a warning, when they cannot be read:
    the run goes on, and those two files are not written."""
    from ..report import read_metrics_rows

    try:
        return read_metrics_rows(run_dir / run_files.METRICS)
    except Exception as exc:  # noqa: BLE001 - as for the figures themselves: extras, never the run's failure
        log.warning("%s and %s will not be written (%s)", run_files.RESULTS_CSV, run_files.RESULTS_FIGURE, reason(exc))
        return None


def _write_lines(path: Path, lines: list[str], replace: bool = True) -> None:
    with atomic_path(path, replace) as tmp:  # lines as read: a hostile line's bytes kept as they were
        tmp.write_text("".join(lines), encoding="utf-8", errors="surrogateescape")


def set_aside_metrics(path: Path, iteration: int) -> Path | None:
    """Rows logged after the checkpoint (the resumed run logs them again), and lines a crash cut
    short, are moved to metrics-after-ITERATION.jsonl beside it, never dropped; returns that file,
    None when every row is kept."""
    kept_rows, later = [], []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="surrogateescape").split("\n"):
            if not line:
                continue
            try:
                keep = json.loads(line)["iter"] <= iteration
            except (ValueError, KeyError, TypeError, RecursionError):
                keep = False
            (kept_rows if keep else later).append(line + "\n")
    if not later:
        return None
    aside = path.with_name(run_files.metrics_set_aside(iteration))
    n = 1
    while True:
        try:
            _write_lines(aside, later, replace=False)
            break
        except FileExistsError:
            n += 1
            aside = path.with_name(run_files.metrics_set_aside(iteration, n))
        except OSError as exc:
            raise RunError(f"cannot write {aside} ({write_failure(exc, path.parent)})", kept(iteration, path.parent)) from exc
    try:
        _write_lines(path, kept_rows)
    except OSError as exc:
        raise RunError(f"cannot write {path} ({write_failure(exc, path.parent)})", kept(iteration, path.parent)) from exc
    log.info("%d row%s of %s logged after iteration %d moved to %s: the resumed run logs them again",
             len(later), "" if len(later) == 1 else "s", path.name, iteration, aside.name)
    return aside


def set_aside_earlier_run(run_dir: Path) -> Path | None:
    """`adapt --exist-ok` into a folder holding an earlier run: every file golabels wrote there
    (run_files.is_run_output) moves into RUN/earlier-run/ (-2, -3, ...), so that nothing of the
    earlier run stays beside the new one's files (the checkpoint a search never writes, an export
    of the old model, its mosaic) and nothing of it is lost. Says so once; returns the folder,
    None when the folder held no run. Other files are left where they are."""
    try:
        entries = sorted(p.name for p in run_dir.iterdir())
    except OSError:
        return None
    names = [n for n in entries if run_files.is_run_output(n)]
    if not names:
        return None
    rows = _line_count(run_dir / run_files.METRICS)
    n = 1
    try:
        while True:
            aside = run_dir / run_files.earlier_run(n)
            try:
                aside.mkdir()
                break
            except FileExistsError:
                n += 1
        for name in names:
            os.rename(run_dir / name, aside / name)
    except OSError as exc:
        raise InputError(f"cannot move the earlier run's files in {run_dir} aside ({reason(exc)})",
                         "pass another --out, or a folder you can write to") from exc
    shown = [f"{name} ({plural(rows, 'logged row')})" if name == run_files.METRICS and rows else name for name in names]
    others = [name for name in entries if name not in names and not name.startswith(".")]
    left = f"; {plural(len(others), 'other file')} ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) left as " + (
        "it is" if len(others) == 1 else "they are") if others else ""
    log.warning("--exist-ok: %s held an earlier run: %s moved to %s%s", run_dir, ", ".join(shown), aside, left)
    return aside


def set_aside_stopped_export(run_dir: Path) -> Path | None:
    """A resume: model.onnx in the run folder was exported from the stopped run, not from the
    model the run will ship; renamed to model-before-resume.onnx (-2, ...) and said, so that a
    stale export never sits beside the finished model under the name export gives it."""
    export = run_dir / run_files.ONNX_MODEL
    if not os.path.lexists(export):
        return None
    n = 1
    while os.path.lexists(run_dir / run_files.stopped_export(n)):
        n += 1
    aside = run_dir / run_files.stopped_export(n)
    try:
        os.rename(export, aside)  # one writer holds the folder: nothing can take the name meanwhile
    except OSError as exc:
        raise InputError(f"cannot rename {export}, an export of the stopped run ({reason(exc)})",
                         "move it out of the run folder, then resume") from exc
    log.warning("%s was exported before the run ended: renamed %s; export again when the run ends", export, aside.name)
    return aside


def _line_count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
