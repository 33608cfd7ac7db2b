"""`golabels report RUN`: what a run did, read back from its directory, as data and as plots.

Everything comes from the files `adapt` writes (config.yaml, metrics.jsonl, summary.json), so a
report works on a finished run, on an interrupted one (no summary.json yet) and on one in progress.
Plots need matplotlib (`pip install golabels[plots]`); without it the report is tables only.

    report-losses.png         classification and adversarial loss over the iterations
    report-discriminator.png  discriminator accuracy (all, source, target) and the fraction of
                              source and target samples whose domain label Go-labels changed
                              (the paper's Fig. 4 and 5 views)
    report-validators.png     each validator over the evaluated snapshots, the oracle target
                              accuracy beside them when --eval-dir was given, the selected snapshot marked

`adapt` itself leaves results.png, the same views on one page (write_results_figure), in every
finished run directory when matplotlib is installed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import atomic_path
from .config import read_yaml_mapping
from .errors import InputError, reason
from .validators import DIRECTION

PLOTS = ("report-losses.png", "report-discriminator.png", "report-validators.png")
VALIDATOR_KEYS = ("src_acc", "entropy", "im", "snd", "dev")


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
        return [{k: v for k, v in row.items() if k in self.EVAL_KEYS or k in DIRECTION} for row in self.rows if "snd" in row]

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def iteration(self) -> int:
        return self.rows[-1]["iter"] if self.rows else 0

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "finished": self.finished, "iteration": self.iteration, "config": self.config,
                "summary": self.summary, "evals": self.evals, "correlations": correlations(self.evals)}


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_metrics_row(row: Any) -> bool:
    """A row as the training loop writes it: an iteration and numbers (None where a loss does not apply, lists for shares)."""
    return (isinstance(row, dict) and isinstance(row.get("iter"), int) and not isinstance(row.get("iter"), bool)
            and all(_is_number(v) or (isinstance(v, list) and all(_is_number(x) for x in v)) for v in row.values()))


def load_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist", "pass a folder written by golabels adapt")
    metrics, config_path = run_dir / "metrics.jsonl", run_dir / "config.yaml"
    if not metrics.is_file() or not config_path.is_file():
        raise InputError(f"{run_dir} is not a golabels run directory (no metrics.jsonl or config.yaml)", "pass a folder written by golabels adapt")
    config = read_yaml_mapping(config_path)
    try:
        lines = metrics.read_text().splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError:
                if number == len(lines):
                    continue  # the last row, cut short by a crash
                raise InputError(f"{metrics} is damaged: line {number} is not JSON", "restore the file, or pass another run") from None
            if not _is_metrics_row(row):
                raise InputError(f"{metrics} is damaged: line {number} is not a golabels metrics row", "restore the file, or pass another run")
            rows.append(row)
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the run in {run_dir} ({reason(exc)})", "check the files, or pass another run") from exc
    if summary is not None and (not isinstance(summary, dict) or not isinstance(summary.get("evals"), list)):
        raise InputError(f"{run_dir} was written by another version of golabels", "rerun it with this one")
    config = {str(k).replace("-", "_"): v for k, v in config.items()}  # config.yaml spells keys as options
    return RunRecord(run_dir, config, rows, summary)


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
    for key in VALIDATOR_KEYS:
        pairs = [(e[key] if DIRECTION[key] else -e[key], e["target_acc"]) for e in evals
                 if e.get(key) is not None and e.get("target_acc") is not None]
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= MIN_SNAPSHOTS else math.nan
        out[key] = None if math.isnan(rho) else round(rho, 4)
    return out


RESULTS_FIGURE = "results.png"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_results_figure(record: RunRecord) -> Path | None:
    """results.png in the run directory: losses, the discriminator's accuracy, the relabeled
    fractions, and each validator (with the oracle target accuracy when --eval-dir was given) over
    the iterations, on one page. None without matplotlib or metrics."""
    plt = _pyplot()
    rows = record.rows
    if plt is None or not rows:
        return None
    evals = record.evals
    validators = [k for k in (*VALIDATOR_KEYS, "target_acc") if any(e.get(k) is not None for e in evals)]
    adversarial = any(r.get("disc_acc") is not None for r in rows)
    panels = 1 + 2 * adversarial + len(validators)
    columns = min(panels, 4)
    fig, axes = plt.subplots((panels + columns - 1) // columns, columns, figsize=(4 * columns, 3.3 * ((panels + columns - 1) // columns)),
                             squeeze=False)
    axes = list(axes.flat)
    for ax in axes[panels:]:
        ax.axis("off")

    def series(ax, key: str, label: str) -> None:
        points = [(r["iter"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=label)

    ax = axes.pop(0)
    series(ax, "loss_cls", "classification")
    series(ax, "loss_adv", "adversarial")
    series(ax, "loss_extra", "method's extra")
    ax.set(xlabel="iteration", title="losses")
    ax.legend(fontsize="small")
    if adversarial:
        ax = axes.pop(0)
        for key, label in (("disc_acc", "all"), ("disc_acc_src", "source"), ("disc_acc_tgt", "target")):
            series(ax, key, label)
        ax.set(xlabel="iteration", title="discriminator accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize="small")
        ax = axes.pop(0)
        series(ax, "relabeled_src", "source")
        series(ax, "relabeled_tgt", "target")
        ax.set(xlabel="iteration", title="domain labels changed (go)", ylim=(-0.02, 1.02))
        ax.legend(fontsize="small")
    selected = (record.summary or {}).get("selected", {}).get("iter")
    for key in validators:
        ax = axes.pop(0)
        points = [(e["iter"], e[key]) for e in evals if e.get(key) is not None]
        ax.plot(*zip(*points), marker="o", color="tab:red" if key == "target_acc" else "tab:blue")
        name = "target accuracy (--eval-dir)" if key == "target_acc" else key.replace("_", "-")
        ax.set(xlabel="iteration", title=f"{name}, {'higher' if DIRECTION[key] else 'lower'} is better")
        if selected is not None:
            ax.axvline(selected, color="gray", linestyle="--", linewidth=1)
    fig.suptitle(f"{record.config.get('method')} + {record.config.get('domain_labels')} domain labels: {record.run_dir.name}")
    fig.tight_layout()
    path = record.run_dir / RESULTS_FIGURE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_confusion_figure(result, path: Path, title: str) -> Path | None:
    """`eval --plots`: the confusion matrix as a PNG, each row (a true class) as fractions of its
    images, so that small classes read as clearly as large ones. None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np

    counts = np.asarray(result.confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.32 * max(counts.shape), 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if max(counts.shape) <= 60:
        ax.set_xticks(range(len(result.predicted_classes)), result.predicted_classes, rotation=90, fontsize="small")
        ax.set_yticks(range(len(result.true_classes)), result.true_classes, fontsize="small")
    if max(counts.shape) <= 15:
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, int(n), ha="center", va="center", fontsize="small", color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}\ntop-1 {result.accuracy:.4f}, mean per class {result.mean_class_accuracy:.4f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_plots(record: RunRecord) -> list[Path] | None:
    """The report's PNGs in the run directory (each written atomically); None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    rows = record.rows
    if not rows:
        return []
    selected = (record.summary or {}).get("selected", {}).get("iter")
    written = []

    def save(fig, name: str) -> None:
        path = record.run_dir / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    def series(ax, key: str, label: str) -> None:
        points = [(r["iter"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=label)

    title = f"{record.config.get('method')} + {record.config.get('domain_labels')} ({record.run_dir.name})"
    fig, ax = plt.subplots(figsize=(7, 4))
    series(ax, "loss_cls", "classification (source)")
    series(ax, "loss_adv", "adversarial (discriminator BCE)")
    series(ax, "loss_extra", "method's extra loss")
    ax.set(xlabel="iteration", ylabel="loss", title=f"losses: {title}")
    ax.legend()
    save(fig, PLOTS[0])

    if any(r.get("disc_acc") is not None for r in rows):
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 4))
        series(a1, "disc_acc", "all")
        series(a1, "disc_acc_src", "source")
        series(a1, "disc_acc_tgt", "target")
        a1.set(xlabel="iteration", ylabel="accuracy", title="discriminator accuracy", ylim=(-0.02, 1.02))
        a1.legend()
        series(a2, "relabeled_src", "source")
        series(a2, "relabeled_tgt", "target")
        a2.set(xlabel="iteration", ylabel="fraction of the batch", ylim=(-0.02, 1.02),
               title="samples whose domain label was changed (go: misclassified by the discriminator)")
        a2.legend()
        series(a3, "adv_grad_norm", "reaching the features")
        a3.set(xlabel="iteration", ylabel="norm", title="adversarial gradient reaching the features\n(after trade-off and reversal)")
        fig.suptitle(title)
        save(fig, PLOTS[1])

    evals = record.evals
    shown = [k for k in (*VALIDATOR_KEYS, "target_acc") if any(e.get(k) is not None for e in evals)]
    if evals and shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
        for ax, key in zip(axes[0], shown):
            points = [(e["iter"], e[key]) for e in evals if e.get(key) is not None]
            ax.plot(*zip(*points), marker="o", color="tab:red" if key == "target_acc" else "tab:blue")
            arrow = "higher is better" if DIRECTION[key] else "lower is better"
            ax.set(xlabel="iteration", title=("target-acc (oracle)" if key == "target_acc" else key.replace("_", "-")) + f"\n{arrow}")
            if selected is not None:
                ax.axvline(selected, color="gray", linestyle="--", linewidth=1)
        fig.suptitle(f"validators: {title}" + (f" — selected iteration {selected}" if selected is not None else ""))
        fig.tight_layout()
        save(fig, PLOTS[2])
    return written
