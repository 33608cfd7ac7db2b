"""`golabels report RUN`: what a run did, read back from its directory.

Everything comes from the files `adapt` writes (config.yaml, metrics.jsonl, summary.json), so a
report works on a finished run, on an interrupted one (no summary.json yet) and on one in progress.
Its figures (report-*.png) and the run's own results.png and results.csv are drawn from the
`RunRecord` read here by results.py.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from . import run_files
from .choices import AUTO_METHOD, STUDENT, parse_search_recipes
from .yaml_files import read_config_fields
from .errors import InputError, reason
from .images import require_regular
from .validators import DIRECTION, LABEL_FREE, is_evaluation_row



@dataclass
class RunRecord:
    run_dir: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.jsonl
    summary: dict[str, Any] | None  # None until the run has finished

    EVAL_KEYS = ("iter", "target_mean_class_acc", "prior_shift", "target_prior", "predicted_share", "predicted_shift",
                 "predicted_shift_p", "source_predicted_share")

    @property
    def evals(self) -> list[dict[str, Any]]:
        """The evaluated snapshots: from summary.json, else the metrics rows that carry validators."""
        if self.summary is not None:
            return self.summary["evals"]
        return [{k: v for k, v in row.items() if k in self.EVAL_KEYS or k in DIRECTION} for row in self.rows if is_evaluation_row(row)]

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def iteration(self) -> int:
        return self.rows[-1]["iter"] if self.rows else 0

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "finished": self.finished, "iteration": self.iteration, "config": self.config,
                "summary": self.summary, "evals": self.evals, "correlations": correlations(self.evals)}


def is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_metrics_row(row: Any) -> bool:
    """A row as the training loop writes it: an iteration and numbers (None where a loss does not apply, lists for shares)."""
    return (isinstance(row, dict) and isinstance(row.get("iter"), int) and not isinstance(row.get("iter"), bool)
            and all(is_number(v) or (isinstance(v, list) and all(is_number(x) for x in v)) for v in row.values()))


def load_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if os.path.lexists(run_dir) else "does not exist"
        raise InputError(f"run directory {run_dir} {what}", "pass a folder written by golabels adapt")
    metrics, config_path = run_dir / run_files.METRICS, run_dir / run_files.CONFIG
    for path in (metrics, config_path, run_dir / run_files.SUMMARY):
        if os.path.lexists(path):  # a FIFO would block the read for ever; a folder is no file of a run
            require_regular(path, "run file", "golabels writes its run files as regular files: restore the run's own file")
    if not metrics.is_file() or not config_path.is_file():
        raise InputError(f"{run_dir} is not a golabels run directory (no {run_files.METRICS} or {run_files.CONFIG})", "pass a folder "
                                                                                                                      "written by golabels "
                                                                                                                      "adapt")
    config = read_config_fields(config_path)
    rows = read_metrics_rows(metrics)
    summary = _read_summary(run_dir / run_files.SUMMARY)
    return RunRecord(run_dir, config, rows, summary)


@dataclass
class SearchRecord:
    """A --method auto run: its config, each candidate's run (None until it starts) and, once
    it has finished, its summary (the pick and every candidate's figures)."""

    run_dir: Path
    config: dict[str, Any]
    candidates: list[tuple[str, RunRecord | None]]
    summary: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "finished": self.summary is not None, "config": self.config, "summary": self.summary,
                "candidates": [{"recipe": recipe, "run": record.to_dict() if record else None} for recipe, record in self.candidates]}


def is_search(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a --method auto search (its config.yaml says so)."""
    path = Path(run_dir) / run_files.CONFIG
    try:
        return path.is_file() and read_config_fields(path).get("method") == AUTO_METHOD
    except InputError:
        return False  # load_run names what is wrong with it


def load_search(run_dir: str | Path) -> SearchRecord:
    run_dir = Path(run_dir)
    config = read_config_fields(run_dir / run_files.CONFIG)
    try:
        recipes = parse_search_recipes(config.get("search_recipes"))
    except ValueError as exc:
        raise InputError(f"{run_dir / run_files.CONFIG} has a bad search-recipes ({exc})", "restore the search's own config.yaml") from None
    candidates = []
    for recipe in recipes:
        folder = run_dir / run_files.SEARCH_CANDIDATES / recipe
        started = (folder / run_files.METRICS).is_file() and (folder / run_files.CONFIG).is_file()
        candidates.append((recipe, load_run(folder) if started else None))
    if config.get("search_pick") == STUDENT:  # the student's run, after the candidates
        folder = run_dir / run_files.SEARCH_STUDENT
        started = (folder / run_files.METRICS).is_file() and (folder / run_files.CONFIG).is_file()
        candidates.append((STUDENT, load_run(folder) if started else None))
    summary = None
    path = run_dir / run_files.SUMMARY
    if path.is_file():
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise InputError(f"{path} is damaged ({reason(exc)})", "restore it, or resume the search to write it again") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("search"), dict):
            raise InputError(f"{path} is damaged (no search in it)", "restore it, or resume the search to write it again")
    return SearchRecord(run_dir, config, candidates, summary)


def read_metrics_rows(metrics: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, each checked (InputError naming the first damaged line; a last line
    cut short by a crash is left out)."""
    try:
        lines = metrics.read_text().splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except RecursionError:
                raise InputError(f"{metrics} is damaged: line {number} is nested too deeply to be a metrics row",
                                 "restore the file, or pass another run") from None
            except ValueError:
                if number == len(lines):
                    continue  # the last row, cut short by a crash
                raise InputError(f"{metrics} is damaged: line {number} is not JSON", "restore the file, or pass another run") from None
            if not _is_metrics_row(row):
                raise InputError(f"{metrics} is damaged: line {number} is not a golabels metrics row", "restore the file, or pass another "
                                                                                                       "run")
            rows.append(row)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the run in {metrics.parent} ({reason(exc)})", "check the files, or pass another run") from exc
    return rows


def _read_summary(path: Path) -> dict | None:
    """summary.json, None while the run has not finished; damaged and foreign ones told apart."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise InputError(f"{path} is damaged (nested too deeply)", "restore it, or resume the run to write it again") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({reason(exc)})", "restore it, or pass another run") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{path} is damaged (not a JSON object)", "restore it, or pass another run")
    if not isinstance(summary.get("evals"), list):
        version = summary.get("golabels_version")
        if isinstance(version, str) and version != __version__:
            raise InputError(f"{path} was written by golabels {version}, whose summary this one ({__version__}) cannot read",
                             "report it with that version")
        raise InputError(f"{path} is damaged (no list of evaluations)", "restore it, or pass another run")
    return summary


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank); nan when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        return math.nan

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        r = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm > 0 else math.nan


# A rank correlation over fewer snapshots is mostly noise: with 3, every value is one of -1, -0.5, 0.5, 1.
MIN_SNAPSHOTS = 5


def correlations(evals: list[dict[str, Any]]) -> dict[str, float | None]:
    """Spearman correlation of each validator, turned "higher is better", with the oracle target
    accuracy over the evaluated snapshots (None under MIN_SNAPSHOTS); 1 means the validator ranks
    them exactly as the labels do."""
    out: dict[str, float | None] = {}
    for key in LABEL_FREE:
        pairs = [(e[key] if DIRECTION[key] else -e[key], e["target_acc"]) for e in evals
                 if e.get(key) is not None and e.get("target_acc") is not None]
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= MIN_SNAPSHOTS else math.nan
        out[key] = None if math.isnan(rho) else round(rho, 4)
    return out
