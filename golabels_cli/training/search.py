"""--method auto: several recipes trained on the frozen backbone's cached features, and the
target's own data choosing what ships, since no recipe wins every task (issue 42).

    RUN/config.yaml                 method: auto, search-recipes, search-pick: what a replay needs
    RUN/candidates/<recipe>/        one complete run per candidate: exactly the run that
                                    `golabels adapt --method <recipe>` with the same options makes
    RUN/model.safetensors           the shipped model (below)
    RUN/summary.json                the search: every candidate's validators, accuracy and seconds,
                                    the pick and why; written last: its presence means it finished

--search-pick ensemble ships the adapted candidates' heads on the one backbone, their
probabilities averaged (models.HeadEnsemble: one backbone pass); student ships one new head that
ensemble teaches (RUN/teacher.safetensors, the ensemble; RUN/student/, a run of STUDENT_RECIPE
with --teacher, teacher.py: the ensemble's labels of the target refined by their nearest neighbours);
agreement ships the adapted candidate whose predictions on the target agree most with the
ensemble's (EnsV, NeurIPS 2024); a validator's name ships the adapted candidate that validator
scores best at its last evaluation (the first of equals, in --search-recipes' order). source-only
is the floor and the reference: no rule ships it but for a target too small to adapt on. Nothing about
the choice reads target labels; --eval-dir, when given, only reports each candidate's accuracy and
the shipped model's.

An interrupted search resumes where it stopped: a finished candidate (its summary.json) is read,
an interrupted one continues from its checkpoint, the others start; so does the student.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import run_files
from ..checkpoint import load_model, save_model
from ..files import atomic_path, check_run_dir, claim_run_dir, one_writer
from ..choices import AGREEMENT, AUTO_METHOD, ENSEMBLE, STUDENT, STUDENT_RECIPE, parse_recipe_name, parse_search_recipes
from ..config import AdaptConfig, build_config, candidate_config, to_yaml
from ..data import ImageSet, scan_unlabeled
from ..device import pick_device
from ..errors import InputError, Interrupted, RunError, plural
from ..formats import json_text
from ..images import require_regular, shared_scans
from ..model_info import ModelInfo
from ..progress import CandidateStarted, RunFinished, no_events
from ..remedies import SMALL_TARGET, SMALL_TARGET_LOSS
from ..validators import LABEL_FREE, better, metric_key, shipped_evaluation
from ..yaml_files import read_config_fields, run_config
from . import run
from .resolve import with_input_size
from .run_dir import set_aside_earlier_run, set_aside_stopped_export, write
from .search_checks import check_search_folder, finished_summary
from .search_pace import Pace
from .selection import assembled_calibration
from .signals import stop_requests
from .state import Progress

log = logging.getLogger("golabels")

CANDIDATES = run_files.SEARCH_CANDIDATES


def adapt(cfg: AdaptConfig, out: str | Path | None = None, exist_ok: bool = False, progress: Progress = no_events) -> dict[str, Any]:
    """A new run (run.adapt), or with --method auto a new search; returns its summary."""
    if cfg.method == AUTO_METHOD:
        return adapt_search(cfg, out, exist_ok, progress)
    return run.adapt(cfg, out, exist_ok, progress)


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, progress: Progress = no_events,
           out: str | Path | None = None) -> dict[str, Any]:
    """An interrupted run continued (run.resume), or an interrupted search; returns its summary.
    With `out`, a run (finished or not) continues in that new folder and RUN stays as it is."""
    run_dir = Path(run_dir)
    declared = run_config(run_dir) if run_dir.is_dir() else {}
    if out is not None:
        if declared.get("method") == AUTO_METHOD or os.path.lexists(run_dir / CANDIDATES):
            raise InputError(f"--out can't be given with --resume of a --method {AUTO_METHOD} search: it continues in its own folder",
                             f"golabels adapt --resume {run_dir}")
        return run.resume(run.continued_copy(run_dir, out), overrides, progress)
    if declared.get("method") != AUTO_METHOD and os.path.lexists(run_dir / CANDIDATES):
        # a search's folder whose config.yaml is gone, damaged or not a file: its candidates say what it was
        path = run_dir / run_files.CONFIG
        read_config_fields(path) if path.is_file() else require_regular(path, "the search's config", "restore it, or start a new search")
        raise InputError(f"{path} does not say method: {AUTO_METHOD}, and {run_dir} holds a search's {CANDIDATES}/",
                         "restore the search's own config.yaml, or start a new search")
    if declared.get("method") != AUTO_METHOD:
        return run.resume(run_dir, overrides, progress)
    if (overrides or {}).get("iters", declared.get("iters")) != declared.get("iters"):
        raise InputError(f"--iters can't change on resume of a --method {AUTO_METHOD} search: its candidates are compared at one "
                         f"length ({declared.get('iters')} iterations)",
                         f"start a new search with --iters {overrides['iters']} (the features are cached)")
    try:
        cfg = build_config({**declared, **(overrides or {})})
    except InputError as exc:
        raise InputError(f"{run_dir / run_files.CONFIG} cannot be resumed ({exc.message})",
                         "restore the search's own config.yaml") from None
    return resume_search(run_dir, cfg, overrides or {}, progress)


def candidate_dir(run_dir: Path, recipe: str) -> Path:
    return run_dir / CANDIDATES / recipe


def adapt_search(cfg: AdaptConfig, out: str | Path | None, exist_ok: bool, progress: Progress = no_events) -> dict[str, Any]:
    """A new search into `out` (as adapt's run directory: never overwritten unless exist_ok).
    Every candidate's config is checked before the directory is made."""
    check_run_dir(out, exist_ok, {"SOURCE": cfg.source, "TARGET": cfg.target, "--eval-dir": cfg.eval_dir})
    recipes = parse_search_recipes(cfg.search_recipes)
    for recipe in recipes:
        candidate_config(cfg, recipe)
    if cfg.domain_labels != "fixed":
        reached = [r for r in recipes if parse_recipe_name(r).adversarial]
        log.info("--domain-labels %s acts on a discriminator: it reaches %s of the candidates (%s)%s", cfg.domain_labels,
                 len(reached), ", ".join(reached) or "none", "; the others have none" if len(reached) < len(recipes) else "")
    existed = out is not None and os.path.lexists(out)
    new_parents = [p for p in (Path(out) if out is not None else Path("runs/adapt/exp")).absolute().parents if not p.exists()]
    run_dir = claim_run_dir(out, exist_ok)
    written = False  # config.yaml: this search's own (the empty claim of a folder it made, or its config)
    try:
        with one_writer(run_dir):
            if exist_ok and (run_dir / CANDIDATES).exists():
                raise InputError(f"{run_dir} already holds a search's {CANDIDATES}/", f"resume it with golabels adapt --resume "
                                 f"{run_dir}, or pass another --out")
            if exist_ok:
                set_aside_earlier_run(run_dir)
            cfg = with_input_size(cfg)  # the search's config.yaml says what --print-config says
            write(run_dir / run_files.CONFIG, to_yaml(cfg), None)
            written = True
            return run_search(cfg, run_dir, {}, progress)
    except InputError:
        if written or not existed:
            _remove_if_untouched(run_dir, not existed, new_parents)
        raise


def _remove_if_untouched(run_dir: Path, made: bool, new_parents: list[Path]) -> None:
    """A search refused before its first candidate wrote anything (its backbone's weights cannot be
    fetched, its data is refused in the first build) takes back what it wrote, as a single run's
    refusal leaves nothing and the next run is not exp2: its config.yaml and empty folders, the run
    directory when this search `made` it, and the parents it made. Anything else stops it."""
    contents = list(run_dir.rglob("*"))
    files = [p for p in contents if not p.is_dir() or p.is_symlink()]
    if files not in ([], [run_dir / run_files.CONFIG]):
        return
    for path in sorted(contents, key=lambda p: len(p.parts), reverse=True):
        path.unlink() if path in files else path.rmdir()
    for folder in ([run_dir] if made else []) + new_parents:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return


def resume_search(run_dir: Path, cfg: AdaptConfig, overrides: dict[str, Any], progress: Progress = no_events) -> dict[str, Any]:
    """Continue a search: the finished candidates read, the interrupted one resumed, the rest run."""
    with one_writer(run_dir):
        if (run_dir / run_files.SUMMARY).is_file() and (run_dir / run_files.MODEL).is_file():
            raise InputError(f"search {run_dir} is already complete", "evaluate or export it, or start a new run")
        set_aside_stopped_export(run_dir)
        return run_search(cfg, run_dir, overrides, progress)


def run_search(cfg: AdaptConfig, run_dir: Path, overrides: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The candidates, then the pick. A SIGINT or SIGTERM anywhere in the search stops it before the
    next stage starts (a candidate's own run stops after its step, or finishes its final writes,
    as a run does; the search's listener hears of the signal either way): Interrupted, exit 130,
    with the resume line, and no further candidate trains."""
    with shared_scans(), stop_requests() as stop:  # the candidates read the same folders: listed and checked once
        try:
            # before anything trains: the candidates started are the search's own, with its options and data
            check_search_folder(run_dir, dataclasses.replace(cfg, **overrides), parse_search_recipes(cfg.search_recipes),
                                STUDENT_RECIPE if cfg.search_pick == STUDENT else None)
            return _run_candidates(cfg, run_dir, overrides, progress, stop)
        except KeyboardInterrupt:  # a second signal outside a candidate's run
            raise Interrupted("stopped at once; the finished stages are kept", _resume_line(run_dir)) from None


def _resume_line(run_dir: Path) -> str:
    return f"resume the search with: golabels adapt --resume {run_dir}"


def _stop_here(stop: list[str], run_dir: Path, where: str) -> None:
    """Interrupted when the search heard a signal since it began: before the stage `where` names."""
    if stop:
        raise Interrupted(f"{stop[0]} before {where}; the finished stages are kept", _resume_line(run_dir))


def _run_candidates(cfg: AdaptConfig, run_dir: Path, overrides: dict[str, Any], progress: Progress, stop: list[str]) -> dict[str, Any]:
    recipes = parse_search_recipes(cfg.search_recipes)
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None  # the first candidate's summary: what the candidates share (data, environment)
    pace = Pace()
    stages = (*recipes, *((STUDENT_RECIPE,) if cfg.search_pick == STUDENT else ()))  # the student trains last, one run more
    for i, recipe in enumerate(recipes):
        folder = candidate_dir(run_dir, recipe)
        summary, began = finished_summary(folder), None
        if summary is None:
            progress(CandidateStarted(i, len(stages), recipe, str(folder), pace.seconds_left(stages[i:], cfg.iters)))
            began = time.perf_counter()
            _stop_here(stop, run_dir, f"candidate {recipe} ({i + 1} of {len(recipes)}) started")
            try:
                if (folder / run_files.CHECKPOINT).is_file():
                    summary = run.resume(folder, overrides, progress)
                else:
                    _clear_unstarted(folder)
                    _keep_threads(cfg, run_dir)
                    summary = run.adapt(candidate_config(dataclasses.replace(cfg, **overrides), recipe), folder, False, progress)
            except Interrupted as exc:
                raise Interrupted(f"{exc.message} (candidate {recipe}, {i + 1} of {len(recipes)})", _resume_line(run_dir)) from None
            except RunError as exc:
                raise RunError(f"candidate {recipe} of the search failed: {exc.message}",
                               f"{exc.hint}; or leave it out with --search-recipes" if exc.hint else None) from None
        cfg = _threads_of_the_search(cfg, run_dir, folder)
        pace.add(parse_recipe_name(recipe).adversarial, summary, time.perf_counter() - began if began is not None else None)
        records.append(candidate_record(recipe, folder, summary))
        first = first or summary
    return _finish(cfg, run_dir, records, first, time.perf_counter() - started, overrides, progress, stop,
                   pace.seconds_left(stages[len(recipes):], cfg.iters))


def _threads_of_the_search(cfg: AdaptConfig, run_dir: Path, folder: Path) -> AdaptConfig:
    """The search decides its threads once: the count its first finished candidate measured (or
    was given) goes into the search's config.yaml, and every later candidate, the student and a
    resume take it from there. Measured again per candidate, a resumed search could choose 2 where
    the uninterrupted one chose 1: the same accuracy, another model file."""
    if cfg.threads is not None:
        return cfg
    chosen = read_config_fields(folder / run_files.CONFIG).get("threads")
    if not isinstance(chosen, int) or isinstance(chosen, bool) or chosen < 0:
        return cfg
    log.info("threads: %s for the search's candidates, as %s chose", chosen or "torch's default", folder.name)
    return dataclasses.replace(cfg, threads=chosen)


def _keep_threads(cfg: AdaptConfig, run_dir: Path) -> None:
    """The search's config.yaml says the threads its candidates use, once a candidate is about to
    start with them (never on a resume that is then refused: a refusal changes nothing)."""
    declared = read_config_fields(run_dir / run_files.CONFIG)
    if cfg.threads is not None and declared.get("threads") != cfg.threads:
        write(run_dir / run_files.CONFIG, to_yaml(build_config({**declared, "threads": cfg.threads})), None)


def _student_label(members: list[str]) -> str:
    """The student as a search's progress names it, short enough for one line of 100 columns."""
    names = ", ".join(members)
    return f"{STUDENT} ({STUDENT_RECIPE}, taught by {names if len(names) <= 24 else plural(len(members), 'candidate')})"


def _clear_unstarted(folder: Path) -> None:
    """A candidate stopped before its first checkpoint leaves only what adapt writes first: the
    search's own files, nothing to keep. Anything else in the folder is not ours to remove."""
    if not folder.exists():
        return
    names = {p.name for p in folder.iterdir()}
    if names - set(run_files.RUN_FILES) or not folder.is_dir() or folder.is_symlink():
        raise InputError(f"{folder} holds files the search did not write ({', '.join(sorted(names - set(run_files.RUN_FILES))[:3])})",
                         "move them away, then resume")
    shutil.rmtree(folder)


def candidate_record(recipe: str, folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What the search keeps of a candidate: its validators at the evaluation of the snapshot it
    shipped (the last, or --select's), its --eval-dir accuracy when given, and its seconds."""
    last = shipped_evaluation(summary)
    return {"recipe": recipe, "run_dir": str(folder), "validators": {k: last.get(k) for k in LABEL_FREE},
            "target_acc": summary.get("target_acc"), "target_mean_class_acc": summary.get("target_mean_class_acc"),
            "seconds": summary.get("seconds")}


def pick(records: list[dict[str, Any]], rule: str, target_images: int | None = None) -> tuple[str, list[str], str]:
    """(what ships: ENSEMBLE, STUDENT or a recipe, the recipes whose heads it holds or that teach
    it, why in words). A target of fewer than SMALL_TARGET images ships the source-only candidate
    when there is one: adapting on so few lost to it on every task measured, whatever the rule
    would pick. `agreement` reads each record's "agreement" (candidate_agreements)."""
    baseline = next((r["recipe"] for r in records if not parse_recipe_name(r["recipe"]).uses_target), None)
    if target_images is not None and target_images < SMALL_TARGET and baseline is not None:
        return baseline, [baseline], (f"{baseline}: the target holds {plural(target_images, 'image')}, fewer than {SMALL_TARGET}, "
                                      f"too few to adapt on ({SMALL_TARGET_LOSS})")
    adapted = [r for r in records if parse_recipe_name(r["recipe"]).uses_target]
    members = [r["recipe"] for r in adapted]
    if rule in (ENSEMBLE, STUDENT) and not members:
        return records[0]["recipe"], [records[0]["recipe"]], "no candidate adapts to the target: the first ships"
    if rule == STUDENT:
        taught_by = f"{len(members)} candidates' mean" if len(members) > 1 else members[0]
        return STUDENT, members, f"a student of {STUDENT_RECIPE}, taught by {taught_by}, labels refined by neighbours"
    if rule == ENSEMBLE:
        if len(members) >= 2:
            return ENSEMBLE, members, f"the mean of {len(members)} adapted candidates' probabilities ({', '.join(members)})"
        return members[0], members, f"{members[0]}, the one adapted candidate (an ensemble needs two)"
    if rule == AGREEMENT:
        scored = [r for r in adapted if r.get("agreement") is not None]
        if not scored:
            first = (adapted or records)[0]["recipe"]
            return first, [first], f"agreement could not be computed: the first adapted candidate, {first}, ships"
        best = max(scored, key=lambda r: r["agreement"])  # the first of equals
        return best["recipe"], [best["recipe"]], (f"{best['recipe']} agrees most with the adapted candidates' ensemble "
                                                  f"({best['agreement']:.4f} of the target)")
    # A validator chooses among the adapted candidates: source-only, which adapts nothing, is the
    # floor; src-acc and dev shipped it on seeds where every adapted candidate read about 10 points
    # above it (benchmarks/RESULTS.md, issue 42).
    choices = adapted or records
    key = metric_key(rule)
    best = None
    for r in choices:
        if better(key, r["validators"].get(key), best["validators"][key] if best else None):
            best = r
    if best is None:
        first = choices[0]["recipe"]
        return first, [first], f"{rule} could not be computed for any candidate: the first, {first}, ships"
    value = best["validators"][key]
    among = f"the {len(choices)} adapted candidates" if adapted else f"the {len(choices)} candidates"
    return best["recipe"], [best["recipe"]], f"{best['recipe']} has the best {rule} of {among} ({value:.4f})"


def candidate_agreements(folders: list[Path], recipes: list[str], members: list[str], target: ImageSet, device: Any,
                         cache_dir: str | None) -> dict[str, float]:
    """{recipe: the share of the target images on which the candidate's top class is the
    members' ensemble's}: each candidate's agreement with the mean of the members'
    probabilities (EnsV's pseudo-labels; the members are the adapted candidates). The candidates
    share one frozen backbone: its features are read once."""
    import torch

    from ..features import backbone_features, model_key

    loaded = {recipe: load_model(folder) for recipe, folder in zip(recipes, folders)}
    model, info = loaded[recipes[0]]
    values = backbone_features(target, model.backbone, model_key(info.backbone, model.backbone, info.data_config), info.data_config,
                               device, cache_dir, 128, 0, "features: target").values
    probabilities = {}
    with torch.no_grad():
        for recipe, (candidate, _) in loaded.items():
            candidate = candidate.eval().to(device)
            probabilities[recipe] = torch.cat([candidate.classify(chunk.to(device))[0].float().softmax(1).cpu()
                                               for chunk in values.split(256)])
    votes = torch.stack([probabilities[m] for m in members]).mean(0).argmax(1)
    return {r: round(float((p.argmax(1) == votes).float().mean()), 6) for r, p in probabilities.items()}


def _finish(cfg: AdaptConfig, run_dir: Path, records: list[dict[str, Any]], first: dict[str, Any], seconds: float,
            overrides: dict[str, Any], progress: Progress, stop: list[str], student_seconds: float | None = None) -> dict[str, Any]:
    """model.safetensors (the pick) and summary.json, the search's last writes; the student's run
    first when the pick is a student."""
    _stop_here(stop, run_dir, "the search's pick")
    adapted = [r["recipe"] for r in records if parse_recipe_name(r["recipe"]).uses_target]
    if len(adapted) >= 2:
        agreement = candidate_agreements([candidate_dir(run_dir, r["recipe"]) for r in records], [r["recipe"] for r in records],
                                         adapted, scan_unlabeled(cfg.target), pick_device(overrides.get("device", cfg.device)),
                                         overrides.get("cache_dir", cfg.cache_dir))
        for r in records:
            r["agreement"] = agreement[r["recipe"]]
    shipped, members, why = pick(records, cfg.search_pick, (first.get("images") or {}).get("target"))
    model_file = run_dir / run_files.MODEL
    student = teacher = None
    if shipped == STUDENT:
        student, teacher = _student(cfg, run_dir, members, overrides, progress, stop, len(records), student_seconds)
    _stop_here(stop, run_dir, "the search's final writes")  # from here, a second of writing: finished as a run's are
    if shipped == ENSEMBLE:
        calibration = save_ensemble([candidate_dir(run_dir, m) for m in members], members, model_file, cfg.domain_labels,
                                    dataclasses.replace(cfg, **overrides))
    else:
        folder = run_dir / run_files.SEARCH_STUDENT if shipped == STUDENT else candidate_dir(run_dir, shipped)
        _copy_model(folder / run_files.MODEL, model_file)
        calibration = (finished_summary(folder) or {}).get("calibration")
    log.info("--method auto ships %s", why)
    accuracy = _shipped_accuracy(cfg, run_dir, records, shipped, overrides, student)
    reference = next((r for r in records if not parse_recipe_name(r["recipe"]).uses_target), None)
    summary = {
        "golabels_version": first.get("golabels_version"),
        "environment": first.get("environment"),
        "run_dir": str(run_dir),
        "backbone": cfg.backbone,
        "method": AUTO_METHOD,
        "domain_labels": cfg.domain_labels,
        "iters": cfg.iters,
        # training, over every candidate (and the student) and session
        "seconds": round(sum(r["seconds"] or 0.0 for r in records) + ((student or {}).get("seconds") or 0.0), 2),
        "session_seconds": round(seconds, 2),
        "device": first.get("device"),
        "classes": first.get("classes"),
        "images": first.get("images"),
        "skipped": first.get("skipped"),
        "target_acc": accuracy[0] if accuracy else None,
        "target_mean_class_acc": accuracy[1] if accuracy else None,
        "search": {"pick": cfg.search_pick, "shipped": shipped, "members": members, "why": why,
                   "source_only_acc": reference["target_acc"] if reference else None, "candidates": records,
                   **({"teacher": teacher, "student": student} if student is not None else {})},
        "calibration": calibration,
    }
    write(run_dir / run_files.SUMMARY, json_text(summary) + "\n", None)
    if stop:
        log.warning("%s during the search's final writes: they are finished, and the search is complete", stop[0])
    progress(RunFinished(summary))
    return summary


def _student(cfg: AdaptConfig, run_dir: Path, members: list[str], overrides: dict[str, Any], progress: Progress, stop: list[str],
             candidates: int, seconds_left: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The student's run (RUN/student/, taught by RUN/teacher.safetensors: the members' ensemble,
    or the one member's model): read when finished, resumed when interrupted, else started.
    Returns its record, as a candidate's (candidate_record), and what the search says of its
    teacher: its members, validators and accuracy, as the student's run measured them."""
    teacher = run_dir / run_files.SEARCH_TEACHER
    if not teacher.is_file():
        save_teacher([candidate_dir(run_dir, m) for m in members], members, teacher, cfg.domain_labels)
    folder = run_dir / run_files.SEARCH_STUDENT
    summary = finished_summary(folder)
    if summary is None:
        progress(CandidateStarted(candidates, candidates + 1, _student_label(members),
                                  str(folder), seconds_left))
        _stop_here(stop, run_dir, "the student started")
        try:
            if (folder / run_files.CHECKPOINT).is_file():
                summary = run.resume(folder, overrides, progress)
            else:
                _clear_unstarted(folder)
                config = dataclasses.replace(candidate_config(dataclasses.replace(cfg, **overrides), STUDENT_RECIPE), teacher=str(teacher))
                summary = run.adapt(config, folder, False, progress)
        except Interrupted as exc:
            raise Interrupted(f"{exc.message} (the student)", _resume_line(run_dir)) from None
        except RunError as exc:
            raise RunError(f"the search's student failed: {exc.message}",
                           f"{exc.hint}; or pass another --search-pick" if exc.hint else None) from None
    teacher = summary.get("teacher") or {}
    return candidate_record(STUDENT, folder, summary), {k: teacher.get(k) for k in TEACHER_KEYS}


TEACHER_KEYS = ("members", "validators", "target_acc", "target_mean_class_acc", "refined_changed")


def _copy_model(source: Path, path: Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def save_teacher(folders: list[Path], members: list[str], path: Path, domain_labels: str = "fixed") -> None:
    """The student's teacher as one model file: the members' ensemble, or the one member's own model."""
    if len(members) >= 2:
        save_ensemble(folders, members, path, domain_labels)
    else:
        _copy_model(folders[0] / run_files.MODEL, path)


def save_ensemble(folders: list[Path], members: list[str], path: Path, domain_labels: str = "fixed",
                  calibrated_on: AdaptConfig | None = None) -> dict[str, Any] | None:
    """The members' heads on their one backbone, as one model file; calibrated on the held-out
    source of the search `calibrated_on` (as --calibrate says; the figures returned)."""
    import torch

    from ..models import HeadEnsemble

    loaded = [load_model(f) for f in folders]
    backbone = loaded[0][0].backbone
    reference = backbone.state_dict()
    for (model, _), folder in zip(loaded[1:], folders[1:]):
        theirs = model.backbone.state_dict()
        if theirs.keys() != reference.keys() or not all(torch.equal(theirs[k], reference[k]) for k in reference):
            raise RunError(f"candidate {folder.name} ships another backbone than {folders[0].name}",
                           "their heads cannot share one; pass --search-pick with a validator")
    first = loaded[0][1]
    ensemble = HeadEnsemble(backbone, [m for m, _ in loaded])
    info = ModelInfo(first.backbone, first.classes, first.data_config, first.bottleneck_dim, AUTO_METHOD, domain_labels, members=members)
    calibration = assembled_calibration(calibrated_on, ensemble, info, pick_device(calibrated_on.device)) if calibrated_on else None
    save_model(ensemble, dataclasses.replace(info, temperature=calibration["temperature"]) if calibration else info, path)
    return calibration


def _shipped_accuracy(cfg: AdaptConfig, run_dir: Path, records: list[dict[str, Any]], shipped: str,
                      overrides: dict[str, Any], student: dict[str, Any] | None) -> tuple[float, float] | None:
    """The shipped model's --eval-dir accuracy: a candidate's or the student's own, or the
    ensemble's, evaluated on the cached features."""
    if not cfg.eval_dir:
        return None
    if shipped != ENSEMBLE:
        record = student if shipped == STUDENT else next(r for r in records if r["recipe"] == shipped)
        return record["target_acc"], record["target_mean_class_acc"]
    from ..inference import evaluate_cached, labeled_for_model

    model, info = load_model(run_dir)
    images, to_model = labeled_for_model(cfg.eval_dir, info.classes, "eval")
    device = pick_device(overrides.get("device", cfg.device))
    result = evaluate_cached(model.to(device), info, images, to_model, device, overrides.get("cache_dir", cfg.cache_dir),
                             2 * cfg.batch_size)
    return result.accuracy, result.mean_class_accuracy

