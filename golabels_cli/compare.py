"""`golabels compare RUN RUN...`: finished runs side by side, and, with a labeled folder, whether
one setting beats another there by more than chance.

    options     what differs among the runs' config.yaml (a flag, a seed, a folder)
    groups      runs that differ only in how they ran (--seed, --threads, --device, ...) are one
                group: a setting measured over seeds
    validators  each run's label-free validators at the snapshot it ships (summary.json)
    accuracy    with --eval-dir: top-1 on the labeled folder, with a 95% bootstrap interval over
                its images (BOOTSTRAP resamples)
    paired      each group against the first, on the same images: the difference of their mean
                accuracies (the mean over a group's runs of each image's correctness), its 95%
                paired-bootstrap interval (the same resampled images for both), and a two-sided
                paired permutation test: the sign of each image's difference flipped at random,
                PERMUTATIONS times (for two single runs it is McNemar's question)

The validators are what a run without labels has; they favoured Go-labels on the task where the
target accuracy said the opposite (docs/method.md), which is why a few dozen labeled target images
are worth more than any of them. The intervals are over the images of the folder given: with 30
images they are wide, and say so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import run_files
from .errors import InputError, reason
from .validators import LABEL_FREE, shipped_evaluation

BOOTSTRAP = 2000
PERMUTATIONS = 10000
CHUNK = 250  # resamples drawn at a time: 250 x the folder's images stays small for any folder


@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]

    @property
    def validators(self) -> dict[str, float | None]:
        """The label-free validators of the snapshot the run ships (its last evaluation, or --select's)."""
        chosen = shipped_evaluation(self.summary)
        return {k: chosen.get(k) for k in LABEL_FREE if isinstance(chosen.get(k), (int, float))}


def finished_run(path: str | Path) -> FinishedRun:
    """A run directory that finished (its config.yaml, summary.json and model.safetensors), read."""
    from .yaml_files import read_config_fields

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} {'is a file, not a folder' if run_dir.exists() else 'does not exist'}",
                         "pass folders written by golabels adapt")
    missing = [name for name in (run_files.CONFIG, run_files.SUMMARY, run_files.MODEL) if not (run_dir / name).is_file()]
    if missing:
        raise InputError(f"{run_dir} holds no {missing[0]}: compare reads finished runs", f"finish it first: golabels adapt --resume "
                                                                                           f"{run_dir}")
    try:
        summary = json.loads((run_dir / run_files.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{run_dir / run_files.SUMMARY} cannot be read ({reason(exc)})", "restore the run's own summary.json") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{run_dir / run_files.SUMMARY} is not a golabels summary", "restore the run's own summary.json")
    return FinishedRun(run_dir, read_config_fields(run_dir / run_files.CONFIG), summary)


def differing_options(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every run, in the order the configs list them."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def how_it_ran() -> tuple[str, ...]:
    """Options that say how a run ran, not what it is: its seed, its threads (rounding only), and
    what a resume may change (device, workers, caches, ...). Runs that differ only in these are
    one setting."""
    from .config import RESUME_OPTIONS

    return ("seed", "threads", *RESUME_OPTIONS)


def group_runs(configs: list[dict[str, Any]], differing: list[str]) -> list[int]:
    """Each run's group, numbered in order of first appearance: runs that differ in nothing but
    how they ran (how_it_ran: the seed, the threads, the device...) are one group."""
    settings: dict[str, int] = {}
    groups = []
    ignored = how_it_ran()
    for config in configs:
        key = json.dumps({k: config.get(k) for k in differing if k not in ignored}, sort_keys=True, default=str)
        groups.append(settings.setdefault(key, len(settings)))
    return groups


def interval(values, low: float = 2.5, high: float = 97.5) -> tuple[float, float]:
    import numpy as np

    return float(np.percentile(values, low)), float(np.percentile(values, high))


def bootstrap_means(per_image, draws: int, seed: int):
    """The mean of `per_image` (rows: series, columns: images) over `draws` resamples of the
    images, the same resamples for every row: [rows, draws]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = per_image.shape[1]
    out = []
    for start in range(0, draws, CHUNK):
        index = rng.integers(0, n, size=(min(CHUNK, draws - start), n))
        out.append(per_image[:, index].mean(axis=2))
    return np.concatenate(out, axis=1)


def permutation_p(differences, draws: int, seed: int) -> float:
    """Two-sided p-value of a paired permutation test: how often flipping the sign of each image's
    difference at random gives a mean at least as far from 0 as the one observed (+1 smoothing)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    observed = abs(float(differences.mean()))
    if not differences.any():
        return 1.0
    extreme = 0
    for start in range(0, draws, CHUNK):
        signs = rng.integers(0, 2, size=(min(CHUNK, draws - start), len(differences))) * 2 - 1
        extreme += int((np.abs((signs * differences).mean(axis=1)) >= observed - 1e-12).sum())
    return (extreme + 1) / (draws + 1)


def compare(runs: list[str | Path], eval_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64, workers: int = 0,
            seed: int = 0) -> dict[str, Any]:
    """The comparison of the module's docstring, as one JSON-able document."""
    import numpy as np

    if len(runs) < 2:
        raise InputError("compare takes two runs or more", "golabels compare RUN RUN [RUN ...]")
    if len({Path(r).resolve() for r in runs}) < len(runs):
        raise InputError("a run is named twice", "name each run once")
    finished = [finished_run(r) for r in runs]
    configs = [f.config for f in finished]
    differing = differing_options(configs)
    groups = group_runs(configs, differing)
    rows = [{"run_dir": str(f.run_dir), "group": g, "options": {k: f.config.get(k) for k in differing},
             "validators": f.validators, "method": f.summary.get("method"), "domain_labels": f.summary.get("domain_labels")}
            for f, g in zip(finished, groups)]
    result: dict[str, Any] = {"runs": rows, "differing": differing, "eval_dir": str(eval_dir) if eval_dir is not None else None}
    correct = None
    if eval_dir is not None:
        from .evaluate import predictions

        seen = None
        vectors = []
        for f in finished:
            images, right = predictions(f.run_dir, eval_dir, device=device, batch_size=batch_size, workers=workers)
            if seen is not None and images != seen:
                raise InputError(f"{f.run_dir}'s classes take other images of {eval_dir} than {finished[0].run_dir}'s",
                                 "compare runs trained on the same classes")
            seen = images
            vectors.append(right)
        correct = np.array(vectors, dtype=np.float64)
        boot = bootstrap_means(correct, BOOTSTRAP, seed)
        for row, acc, draws in zip(rows, correct.mean(axis=1), boot):
            row["accuracy"], row["interval"] = float(acc), interval(draws)
        result["images"] = int(correct.shape[1])
    members = [[i for i, g in enumerate(groups) if g == n] for n in range(max(groups) + 1)]
    summary_groups = []
    for n, index in enumerate(members):
        group: dict[str, Any] = {"group": n, "runs": len(index),
                                 "options": {k: configs[index[0]].get(k) for k in differing if k not in how_it_ran()},
                                 "validators": _mean_validators([rows[i]["validators"] for i in index])}
        if correct is not None:
            accuracies = correct[index].mean(axis=1)
            group["accuracy"] = float(accuracies.mean())
            group["interval"] = interval(bootstrap_means(correct[index].mean(axis=0)[None, :], BOOTSTRAP, seed)[0])
            group["std"] = float(accuracies.std(ddof=1)) if len(index) > 1 else None
            if n > 0:
                difference = correct[index].mean(axis=0) - correct[members[0]].mean(axis=0)
                draws = bootstrap_means(difference[None, :], BOOTSTRAP, seed + n)[0]
                group["difference"] = float(difference.mean())
                group["difference_interval"] = interval(draws)
                group["p"] = permutation_p(difference, PERMUTATIONS, seed + n)
        summary_groups.append(group)
    result["groups"] = summary_groups
    return result


def _mean_validators(validators: list[dict[str, float | None]]) -> dict[str, float]:
    keys = [k for k in LABEL_FREE if all(isinstance(v.get(k), (int, float)) and math.isfinite(v[k]) for v in validators)]
    return {k: sum(v[k] for v in validators) / len(validators) for k in keys}


def write_compare_figure(result: dict[str, Any], path: str | Path) -> Path | None:
    """--plot FILE: each group's accuracy on the labeled folder (its runs as dots, their mean with
    its 95% bootstrap interval over the images as a bar), never over an existing file; None
    without matplotlib."""
    from .files import atomic_path
    from .results import pyplot

    plt = pyplot()
    if plt is None:
        return None
    groups = result["groups"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups)), 3.6))
    for g in groups:
        runs = [r for r in result["runs"] if r["group"] == g["group"]]
        ax.scatter([g["group"]] * len(runs), [100 * r["accuracy"] for r in runs], color="0.5", s=14, zorder=3)
        low, high = g["interval"]
        ax.errorbar([g["group"]], [100 * g["accuracy"]], yerr=[[100 * (g["accuracy"] - low)], [100 * (high - g["accuracy"])]],
                    fmt="o", color="C0", capsize=6, zorder=4)
    ax.set_xticks([g["group"] for g in groups], [group_label(g, 28) for g in groups], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(f"accuracy on {Path(result['eval_dir']).name} (%)")
    ax.set_title("golabels compare: runs (dots), mean and 95% interval", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    with atomic_path(path, replace=False) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def group_label(group: dict[str, Any], limit: int = 60) -> str:
    """A group as its options say it: `domain-labels go`, or `(the same)` when only seeds differ."""
    from .options import option_name

    text = ", ".join(f"{option_name(k)} {_shown(v)}" for k, v in group["options"].items()) or "(the same options)"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
