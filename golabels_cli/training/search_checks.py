"""What a search's folder must be before a resume trains anything (issue 54): its candidates are
its own folders (not links to other runs, not FIFOs), each was trained with the options the
search's config.yaml gives it now, and each finished one on the folders as they are now (the same
classes, the same number of images). A resumed single run checks the same of its own checkpoint
(run.py); a search's finished candidates have no checkpoint left to resume, so their config.yaml
and summary.json are what is compared. Nothing here writes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .. import run_files
from ..config import AdaptConfig, FIELDS, RESUME_OPTIONS, candidate_config, option_name
from ..data import scan_labeled, scan_unlabeled
from ..errors import InputError, reason
from ..images import not_regular
from ..yaml_files import read_config_fields
from .run import shown_value

RESTART = "restore the search's own files, or start a new search"


def check_search_folder(run_dir: Path, cfg: AdaptConfig, recipes: tuple[str, ...], student_recipe: str | None) -> None:
    """InputError naming the first file of the search in `run_dir` that a resume could not trust."""
    folders = [(recipe, run_dir / run_files.SEARCH_CANDIDATES / recipe) for recipe in recipes]
    if student_recipe is not None:
        folders.append((student_recipe, run_dir / run_files.SEARCH_STUDENT))
    for _, folder in folders:
        _own_folder(folder)
    if student_recipe is not None and os.path.lexists(teacher := run_dir / run_files.SEARCH_TEACHER):
        _own_file(teacher, "the student's teacher")
    current = None
    for recipe, folder in folders:
        if not (folder / run_files.CONFIG).is_file():
            continue  # not started: it starts with the search's options
        expected = candidate_config(cfg, recipe)
        if folder.name == run_files.SEARCH_STUDENT:
            expected = dataclasses.replace(expected, teacher=str(run_dir / run_files.SEARCH_TEACHER))
        _same_options(folder, expected, run_dir / run_files.CONFIG)
        summary = finished_summary(folder)
        if summary is not None:
            current = current or _folders_now(cfg)
            _same_data(folder, summary, current)


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """A candidate's summary when it finished (summary.json and model.safetensors), checked to
    hold what the search reads of it; else None."""
    path = folder / run_files.SUMMARY
    if not (path.is_file() and (folder / run_files.MODEL).is_file()):
        return None
    hint = "restore it, or remove that candidate's folder to train it again"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path} cannot be read ({reason(exc)})", hint) from exc
    shapes = {"evals": list, "selected": dict, "classes": list, "images": dict}
    bad = next((k for k, kind in shapes.items() if not isinstance(summary, dict) or not isinstance(summary.get(k), kind)), None)
    if bad is None and not all(isinstance(e, dict) for e in summary["evals"]):
        bad = "evals"
    if bad is None and not all(_number(summary.get(k)) for k in ("seconds", "target_acc", "target_mean_class_acc")):
        bad = next(k for k in ("seconds", "target_acc", "target_mean_class_acc") if not _number(summary.get(k)))
    if bad is not None:
        raise InputError(f"{path} is not a golabels summary (its {bad} is missing or of the wrong kind)", hint)
    return summary


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _own_folder(folder: Path) -> None:
    if not os.path.lexists(folder):
        return
    if folder.is_symlink():
        raise InputError(f"{folder} is a link: a search's candidates are folders of its own, and this one would resume or ship "
                         "another run", f"remove the link (that candidate then trains again), or {RESTART}")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder ({not_regular(folder) or 'a file'})", f"remove it, or {RESTART}")


def _own_file(path: Path, what: str) -> None:
    if path.is_symlink():
        raise InputError(f"{what} {path} is a link", f"remove it (the search writes it again), or {RESTART}")
    why = not_regular(path)
    if why is not None:
        raise InputError(f"{what} {path} is {why}", f"remove it (the search writes it again), or {RESTART}")


def _same_options(folder: Path, expected: AdaptConfig, search_config: Path) -> None:
    """The candidate's config.yaml says what the search's config gives it now, but for what a resume
    may change and what the candidate resolved from the folders when it started (null in the
    search's config)."""
    path = folder / run_files.CONFIG
    theirs = read_config_fields(path)
    for key, ours in dataclasses.asdict(expected).items():
        if key in RESUME_OPTIONS or key not in FIELDS or key not in theirs or ours is None or key == "threads":
            continue  # threads: decided by the first candidate (older searches measured per candidate); it moves rounding only
        if key == "teacher" and isinstance(theirs[key], str) and Path(theirs[key]).resolve() == Path(ours).resolve():
            continue  # the student's teacher, named from wherever the search was started or resumed
        if theirs[key] != ours:
            raise InputError(f"{search_config} says {option_name(key)}: {shown_value(ours)} and {path} says {shown_value(theirs[key])}: "
                             "the candidate was trained with other options than the search's config gives it now",
                             "restore the search's own config.yaml, or start a new search")


def _folders_now(cfg: AdaptConfig) -> dict[str, Any]:
    source, target = scan_labeled(cfg.source, "source"), scan_unlabeled(cfg.target)
    return {"classes": source.classes, "source": len(source), "target": len(target)}


def _same_data(folder: Path, summary: dict[str, Any], now: dict[str, Any]) -> None:
    """A finished candidate was trained on the folders as they are now: their classes, in order,
    and their number of images (its training and held-out source images, its target images)."""
    images = summary["images"]
    if summary["classes"] != now["classes"]:
        gone = [c for c in summary["classes"] if c not in now["classes"]]
        new = [c for c in now["classes"] if c not in summary["classes"]]
        what = (f"{gone[0]!r} is gone" if gone else "") + (", " if gone and new else "") + (f"{new[0]!r} is new" if new else "")
        raise InputError(f"the source folder's classes changed since candidate {folder.name} finished ({what or 'their order changed'}): "
                         "its head would be averaged with others of another class order",
                         "restore the source folder, or start a new search")
    trained = {"source": (images.get("source") or 0) + (images.get("source_val") or 0), "target": images.get("target")}
    for role in ("source", "target"):
        if trained[role] != now[role]:
            raise InputError(f"the {role} folder holds {now[role]} images, and candidate {folder.name} trained on {trained[role]}",
                             f"restore the {role} folder, or start a new search")
