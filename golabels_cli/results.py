"""A run's numbers as files, drawn from its `RunRecord` (report.py): the figures of `golabels
report` and the results `adapt` leaves in every finished run directory. Plots need matplotlib
(`pip install golabels[plots]`); without it there are tables only.

    report-losses.png         classification and adversarial loss over the iterations
    report-discriminator.png  discriminator accuracy (all, source, target) and the fraction of
                              source and target samples whose domain label Go-labels changed
                              (the paper's Fig. 4 and 5 views)
    report-validators.png     each validator over the evaluated snapshots, the oracle target
                              accuracy beside them when --eval-dir was given, the selected snapshot marked
    results.png               the same views on one page (write_results_figure)
    results.csv               metrics.jsonl and the evaluated snapshots as one table (write_results_csv)

A panel is drawn only where a series has at least 2 points (one point is no curve), and a file
only where a panel is left; the relabeled fractions only where domain labels can change (not
under `fixed`).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import run_files
from .files import atomic_path, write_text_atomic
from .formats import printable
from .report import RunRecord, is_number
from .validators import DIRECTION, LABEL_FREE

PLOTS = run_files.REPORT_PLOTS

# The curves of each panel: (metrics key, legend label).
LOSS_SERIES = (("loss_cls", "classification (source)"), ("loss_adv", "adversarial (discriminator BCE)"),
               ("loss_extra", "method's extra loss"), ("loss_target", "on the target's predictions"),
               ("loss_teacher", "to the teacher's labels"))
DISC_SERIES = (("disc_acc", "all"), ("disc_acc_src", "source"), ("disc_acc_tgt", "target"))
RELABELED_SERIES = (("relabeled_src", "source"), ("relabeled_tgt", "target"))
# report-*.png: which panels each file holds (a file none of whose panels can be drawn is not written).
REPORT_FILES = {PLOTS[0]: ("losses",), PLOTS[1]: ("discriminator", "relabeled", "adv_grad_norm"),
                PLOTS[2]: (*LABEL_FREE, "target_acc")}
# results.png leaves out the gradient norm: a diagnostic for `golabels report`, not a result.
RESULTS_PANELS = ("losses", "discriminator", "relabeled", *LABEL_FREE, "target_acc")


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


@dataclass
class Panel:
    """One plot over the iterations: only series with at least 2 points (one point is no curve)."""

    name: str  # "losses", "discriminator", "relabeled", "adv_grad_norm", or a validator key / "target_acc"
    title: str
    series: list[tuple[str, list[tuple[int, float]]]]  # (legend label, (iteration, value) points)
    ylabel: str = ""
    fraction: bool = False  # values in [0, 1]: the y axis shows all of it
    legend: bool = True
    snapshots: bool = False  # a validator over the evaluated snapshots: markers, the selected one marked


def _points(items: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["iter"], r[key]) for r in items if isinstance(r.get("iter"), int) and is_number(r.get(key)) and r.get(key) is not None]


def panels(record: RunRecord) -> list[Panel]:
    """Every panel the run's files can fill, in the order the figures show them: each series with
    at least 2 points, each panel with at least one such series (others are left out, so that no
    figure shows a lone dot or an empty frame)."""
    rows, evals = record.rows, record.evals
    mode = record.config.get("domain_labels")

    def lines(pairs: tuple[tuple[str, str], ...], items: list[dict[str, Any]]) -> list[tuple[str, list[tuple[int, float]]]]:
        return [(label, points) for key, label in pairs if len(points := _points(items, key)) >= 2]

    candidates = [
        Panel("losses", "losses", lines(LOSS_SERIES, rows), ylabel="loss"),
        Panel("discriminator", "discriminator accuracy", lines(DISC_SERIES, rows), ylabel="accuracy", fraction=True),
    ]
    # Under fixed domain labels no label is ever changed: the panel would be a line at 0.
    if mode != "fixed":
        what = "samples dropped (zero-out)" if mode == "zero-out" else f"domain labels changed ({mode or 'go'})"
        candidates.append(Panel("relabeled", what, lines(RELABELED_SERIES, rows),
                                ylabel="fraction of the batch", fraction=True))
    candidates.append(Panel("adv_grad_norm", "adversarial gradient reaching the features\n(after trade-off and reversal)",
                            lines((("adv_grad_norm", "norm"),), rows), ylabel="norm", legend=False))
    for key in (*LABEL_FREE, "target_acc"):
        name = "target accuracy (oracle, --eval-dir)" if key == "target_acc" else key.replace("_", "-")
        candidates.append(Panel(key, f"{name}\n{'higher' if DIRECTION[key] else 'lower'} is better", lines(((key, name),), evals),
                                snapshots=True, legend=False))
    return [p for p in candidates if p.series]


def results_panels(record: RunRecord) -> list[str]:
    """The names of the panels results.png shows for this run (see `panels`), in order."""
    return [p.name for p in panels(record) if p.name in RESULTS_PANELS]


def report_panels(record: RunRecord) -> dict[str, list[str]]:
    """report-*.png file name -> the names of the panels it shows, for the files that have any."""
    names = [p.name for p in panels(record)]
    out = {file: [n for n in names if n in held] for file, held in REPORT_FILES.items()}
    return {file: held for file, held in out.items() if held}


def _draw(ax, panel: Panel, selected: int | None, width: int) -> None:
    """One panel on `ax`; each line of its title wrapped at `width` characters so that neighbours'
    titles never meet."""
    import textwrap

    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for label, points in panel.series:
        if panel.snapshots:
            ax.plot(*zip(*points), marker="o", color="tab:red" if panel.name == "target_acc" else "tab:blue")
        else:
            ax.plot(*zip(*points), label=label)
    title = "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in panel.title.split("\n"))
    ax.set(xlabel="iteration", ylabel=panel.ylabel, title=title)
    # At most 5 ticks (no iteration 2.5 on a short run), thousands as "20k": at any run length a
    # panel's tick labels stay apart (10 ticks of "10000" ran into one another).
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(iteration_label))
    if panel.fraction:
        ax.set_ylim(-0.02, 1.02)
    if panel.legend:
        ax.legend(fontsize="small")
    if panel.snapshots and selected is not None:
        ax.axvline(selected, color="gray", linestyle="--", linewidth=1)


def iteration_label(value: float, _position=None) -> str:
    """An iteration on an axis: 800, 2.5k, 20k, 1.2M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            return f"{value / size:.4g}{suffix}"
    return f"{value:.0f}"


def _grid(plt, shown: list[Panel], selected: int | None, columns: int, width: float, height: float, title_width: int):
    """A figure of `shown` in rows of `columns`, the unused cells blank."""
    columns = min(len(shown), columns)
    rows = (len(shown) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    axes = list(axes.flat)
    for ax, panel in zip(axes, shown):
        _draw(ax, panel, selected, title_width)
    for ax in axes[len(shown):]:
        ax.axis("off")
    return fig


def _selected(record: RunRecord) -> int | None:
    return ((record.summary or {}).get("selected") or {}).get("iter")


def results_figure(plt, record: RunRecord):
    """results.png's figure (laid out), or None when no panel has a curve to draw."""
    shown = [p for p in panels(record) if p.name in RESULTS_PANELS]
    if not shown:
        return None
    fig = _grid(plt, shown, _selected(record), columns=4, width=4.2, height=3.4, title_width=34)
    fig.suptitle(printable(f"{record.config.get('method')} + {record.config.get('domain_labels')} domain labels: {record.run_dir.name}"))
    fig.tight_layout()
    return fig


def write_results_figure(record: RunRecord) -> Path | None:
    """results.png in the run directory: losses, the discriminator's accuracy, the relabeled
    fractions (not under fixed domain labels), and each validator (with the oracle target accuracy
    when --eval-dir was given) over the iterations, on one page; only the panels with a curve to
    draw. Returns its path; None without matplotlib, or when no panel has 2 points."""
    plt = pyplot()
    fig = results_figure(plt, record) if plt is not None else None
    if fig is None:
        return None
    path = record.run_dir / run_files.RESULTS_FIGURE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def report_figures(plt, record: RunRecord) -> Iterator[tuple[str, Any]]:
    """(file name, figure laid out) of each report PNG that has a panel to draw."""
    by_name = {p.name: p for p in panels(record)}
    selected = _selected(record)
    title = printable(f"{record.config.get('method')} + {record.config.get('domain_labels')} ({record.run_dir.name})")
    for file, names in report_panels(record).items():
        shown = [by_name[n] for n in names]
        if file == PLOTS[0]:
            fig = _grid(plt, shown, selected, columns=1, width=7, height=4, title_width=60)
            fig.axes[0].set_title(f"losses: {title}")
        elif file == PLOTS[1]:
            fig = _grid(plt, shown, selected, columns=3, width=5.6, height=4.2, title_width=46)
            fig.suptitle(title)
        else:
            fig = _grid(plt, shown, selected, columns=len(shown), width=3.4, height=3.6, title_width=26)
            fig.suptitle(f"validators: {title}" + (f" — selected iteration {selected}" if selected is not None else ""))
        fig.tight_layout()
        yield file, fig


def write_plots(record: RunRecord) -> list[Path] | None:
    """The report's PNGs in the run directory (each written atomically), those with a panel to
    draw: returns their paths; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    written = []
    for file, fig in report_figures(plt, record):
        path = record.run_dir / file
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def plots_available() -> bool:
    """Whether matplotlib can be imported, without importing it (a second's import)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


SEARCH_PANELS = (("loss_cls", "classification loss on the source"), ("im", "IM (validator, higher is better)"),
                 ("target_acc", "target accuracy (--eval-dir labels)"))


def write_search_figure(search) -> Path | None:
    """`golabels report` of a search: report-search.png in its folder, its candidates' curves side
    by side (one line each) in a panel per figure: the classification loss over the iterations,
    the IM validator at each evaluation, and the --eval-dir accuracy when the runs have it; the
    panels with a curve to draw only. Returns its path; None without matplotlib or a curve."""
    plt = pyplot()
    if plt is None:
        return None
    curves: dict[str, list[tuple[str, list[int], list[float]]]] = {key: [] for key, _ in SEARCH_PANELS}
    for recipe, record in search.candidates:
        if record is None:
            continue
        for key, _ in SEARCH_PANELS:
            rows = record.rows if key == "loss_cls" else record.evals
            points = [(r["iter"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if len(points) >= 2:
                curves[key].append((recipe, [i for i, _ in points], [v for _, v in points]))
    shown = [(key, title) for key, title in SEARCH_PANELS if curves[key]]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], shown):
        for recipe, xs, ys in curves[key]:
            ax.plot(xs, ys, marker="o" if key != "loss_cls" else None, markersize=3, linewidth=1.2, label=printable(recipe))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(printable(f"--method auto: {search.run_dir.name}, candidates side by side"), fontsize=10)
    fig.tight_layout()
    path = search.run_dir / run_files.SEARCH_REPORT_PLOT
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# ---- results.csv ------------------------------------------------------------------------------


def results_table(record: RunRecord) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of results.csv: one row per metrics row, each evaluated snapshot's values
    merged into the row of its iteration (or a row of its own), in iteration order; columns "iter"
    first, then every key in order of first appearance, but those holding lists or dicts."""
    merged: dict[int, dict[str, Any]] = {}
    for row in record.rows:
        merged.setdefault(row["iter"], {}).update(row)
    for snapshot in record.evals:
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("iter"), int):
            continue
        target = merged.setdefault(snapshot["iter"], {"iter": snapshot["iter"]})
        for key, value in snapshot.items():
            if target.get(key) is None:  # the metrics row's value (rounded as logged) stays
                target[key] = value
    rows = [merged[i] for i in sorted(merged)]
    nested = {k for row in rows for k, v in row.items() if isinstance(v, (list, dict))}
    columns = ["iter"]
    for row in rows:
        columns += [k for k in row if k not in columns and k not in nested]
    return columns, rows


def write_results_csv(record: RunRecord) -> Path:
    """RUN/results.csv, written atomically (see `results_table`; an empty cell where a row has no
    value): the run's numbers for a spreadsheet or pandas. Returns its path."""
    import csv
    import io

    columns, rows = results_table(record)
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    path = record.run_dir / run_files.RESULTS_CSV
    write_text_atomic(path, text.getvalue())
    return path
