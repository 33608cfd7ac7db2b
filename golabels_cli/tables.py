"""The result tables on stdout: adapt's summary, eval's per-class table and confusion, and
`golabels report`. No figure is ever cut: a table wider than the terminal leaves out whole
columns, the least telling first, and says which (--json has them all); text wraps between words.
"""

from __future__ import annotations

import io
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from .console import data_report_lines, fmt, stderr, stdout
from .remedies import remedy_flags
from .validators import LABEL_FREE, LEAST_TELLING_FIRST
from .validators import NAMES as VALIDATOR_NAMES  # metrics key -> the name shown
from . import run_files


def _render(table: Table, width: int) -> str:
    trial = Console(width=width, file=io.StringIO(), color_system=None)
    trial.print(table)
    return trial.file.getvalue()


def _cut_at(table: Table, width: int) -> bool:
    """Whether rich, laying the table out in `width` columns, would cut a cell short (its "…",
    beyond any a cell holds itself): tried, not predicted, as rich's own layout may shrink a
    column below its longest word."""
    return _render(table, width).count("…") > _render(table, 100_000).count("…")


def fitted(build: Callable[[list[str]], Table], columns: list[str], least_telling: list[str],
           width: int | None = None) -> tuple[Table, list[str]]:
    """The table `build(kept columns)` at the console's width: the columns of `least_telling` left
    out, first to last, until no cell is cut. Returns the table and the columns left out."""
    width = width or stdout.width
    kept, dropped = list(columns), []
    table = build(kept)
    for name in least_telling:
        if not _cut_at(table, width):
            break
        kept.remove(name)
        dropped.append(name)
        table = build(kept)
    return table, dropped


def _print_fitted(table: Table, dropped: list[str]) -> None:
    stdout.print(table)
    if dropped:
        stdout.print(f"(left out at this width: {', '.join(dropped)}; a wider terminal or --json shows them)", markup=False)


def _two_columns(title: str) -> Table:
    """A what/value table whose values wrap between words and fold a word longer than the column
    (a path): never an ellipsis."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table


def print_adapt_summary(summary: dict[str, Any]) -> None:
    table = _two_columns(f"golabels adapt: {summary['run_dir']}")
    bn = {"target": "; BatchNorm statistics of the target", "train": ""}.get(summary.get("bn_stats") or "train", "")
    taught = f"; taught by {summary['teacher']['model']}" if summary.get("teacher") else ""
    table.add_row("method", f"{summary['method']} with {summary['domain_labels']} domain labels{bn}{taught}")
    table.add_row("backbone", summary["backbone"])
    where = summary["device"] + (f", {summary['processes']} processes" if summary.get("processes", 1) > 1 else "")
    speed = f"{summary['images_per_s']:.0f} images/s on {where}"
    if summary.get("train_images_per_s") is not None:  # summaries written before it have none
        speed += f"; the steps alone {summary['train_images_per_s']:.0f} images/s, evaluating {summary['eval_seconds']:.1f}s"
    if summary.get("resumed_at"):
        table.add_row("iterations", f"{summary['iters']} in {summary['seconds']:.1f}s over several sessions; this one: iterations "
                      f"{summary['resumed_at'] + 1}-{summary['iters']} in {summary['session_seconds']:.1f}s ({speed})")
    else:
        table.add_row("iterations", f"{summary['iters']} in {summary['seconds']:.1f}s ({speed})")
    images, skipped = summary["images"], summary["skipped"]
    table.add_row("images",
                  f"source {images['source']}, target {images['target']}" + (f", eval {images['eval']}" if images["eval"] else ""))
    if any(skipped.values()):
        table.add_row("skipped", ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    final, selected = summary["final"], summary["selected"]
    # Training's figures are of its last iteration, whichever snapshot is shipped: say so when they differ.
    at = f" (iteration {summary['iters']})" if selected["by"] != "last" and selected["iter"] != summary["iters"] else ""
    on_target = f", on the target's predictions {fmt(final['loss_target'])}" if final.get("loss_target") is not None else ""
    on_target += f", to the teacher's labels {fmt(final['loss_teacher'])}" if final.get("loss_teacher") is not None else ""
    adversarial = f", adversarial {fmt(final['loss_adv'])}" if final["disc_acc"] is not None else ""  # none without a discriminator
    table.add_row("final losses", f"classification {fmt(final['loss_cls'])}{adversarial}{on_target}{at}")
    if final["disc_acc"] is not None:
        grad = f", adversarial gradient {final['adv_grad_norm']:.3g}" if final.get("adv_grad_norm") is not None else ""
        table.add_row("discriminator", f"accuracy {final['disc_acc']:.3f}, relabeled source {final['relabeled_src']:.3f} / target "
                                       f"{final['relabeled_tgt']:.3f}{grad}{at}")
    if selected["by"] != "last":
        table.add_row("model", f"the snapshot of iteration {selected['iter']}, selected by {selected['by']}"
                      + (f" ({selected['value']:.4f})" if selected["value"] is not None else " (not computable: the last)"))
    final = next((e for e in summary["evals"] if e["iter"] == selected["iter"]), None)
    if final:
        shipped = f" (iteration {selected['iter']}, the shipped snapshot)" if at else ""
        values = " ".join(f"{name} {fmt(final.get(key), '.4f')}" for key, name in VALIDATOR_NAMES.items() if key != "target_acc")
        table.add_row("validators", values + shipped)
    if summary.get("calibration"):
        table.add_row("confidences", calibrated_row(summary["calibration"]))
    if summary["target_acc"] is not None:
        table.add_row("target accuracy", f"{summary['target_acc']:.4f} (mean per class {summary['target_mean_class_acc']:.4f}; --eval-dir "
                                         "labels)")
    files = [summary.get(k) for k in ("results_figure", "results_csv", "target_mosaic") if summary.get(k)]
    if files:
        table.add_row("figures", f"{', '.join(files)} in {summary['run_dir']}")
    stdout.print(table)


def print_eval(result, title: str) -> None:
    table = Table(title=title)
    table.add_column("class", overflow="fold")
    for name in ("images", "correct", "accuracy"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in result.per_class:
        table.add_row(row.name, str(row.images), str(row.correct), f"{row.accuracy:.4f}")
    stdout.print(table)
    stdout.print(f"top-1 accuracy {result.accuracy:.4f} on {result.images} images; "
                 f"mean per-class accuracy {result.mean_class_accuracy:.4f}")
    if result.calibration:
        stdout.print(calibration_line(result.calibration), markup=False)
    if result.skipped:
        stdout.print(f"{result.skipped} unreadable image{'s' if result.skipped != 1 else ''} skipped")
    if result.most_confused:
        confused = Table(title=f"most confused (the {len(result.most_confused)} largest mistakes)")
        for name in ("true", "predicted as"):
            confused.add_column(name, overflow="fold")
        for name in ("images", "of the class"):
            confused.add_column(name, justify="right", no_wrap=True)
        for pair in result.most_confused:
            confused.add_row(pair.true, pair.predicted, str(pair.images), f"{pair.share:.1%}")
        stdout.print(confused)
    if len(result.predicted_classes) <= 12:
        confusion = Table(title="confusion (rows: true, columns: predicted)")
        confusion.add_column("", overflow="fold")
        for name in result.predicted_classes:
            confusion.add_column(name, justify="right", no_wrap=True)
        for name, row in zip(result.true_classes, result.confusion):
            confusion.add_row(name, *map(str, row))
        if not _cut_at(confusion, stdout.width):
            stdout.print(confusion)
        else:
            stdout.print("(the confusion matrix is wider than this terminal: --confusion FILE writes it as CSV, --plots draws it)",
                         markup=False)


def calibrated_row(calibration: dict) -> str:
    """A run's calibration (summary.json's), in the adapt table."""
    shown = calibration.get("eval") or calibration["source_val"]
    where = "on the --eval-dir labels" if calibration.get("eval") else "there"
    if calibration["temperature"] == 1.0:  # the fit's lower bound: calibration only softens
        return (f"temperature 1: its {calibration['images']} held-out source images ask for no softening "
                f"(calibration error {shown['ece']:.3f} {where})")
    return (f"logits divided by {calibration['temperature']:g}, fitted on {calibration['images']} held-out source images "
            f"(calibration error {shown['ece_at_temperature_1']:.3f} → {shown['ece']:.3f} {where})")


def calibration_line(calibration: dict) -> str:
    """How far the confidences are from the accuracy, before and after the model's temperature."""
    line = f"calibration error (ECE) {calibration['ece']:.4f}"
    if calibration["temperature"] == 1.0:
        return line + " (confidences not calibrated: temperature 1)"
    return line + f" with temperature {calibration['temperature']:g}; {calibration['ece_at_temperature_1']:.4f} without"


def environment_line(env: dict) -> str:
    """summary.json's `environment` in one line: what to compare before comparing two runs' figures."""
    libraries = ", ".join(f"{name} {env[name]}" for name in ("torch", "torchvision", "timm", "numpy", "pillow") if env.get(name))
    hardware = env.get("gpu") or " ".join(filter(None, [env.get("cpu"), f"({env['cpu_kernels']})" if env.get("cpu_kernels") else None]))
    return f"Python {env.get('python')}, {libraries}" + (f"; {hardware}" if hardware else "")


def print_report(record, plots: list | None, plots_wanted: bool) -> None:
    """`golabels report`: the run, its data, its training trajectory and its validators."""
    _print_overview(record)
    data = (record.summary or {}).get("data")
    if data:
        _print_data(data)
    if record.rows:
        _print_training(record.rows, record.config.get("domain_labels"))
    if record.evals:
        _print_validators(record.evals, (record.summary or {}).get("selected", {}).get("iter"))
    if plots_wanted:
        print_plots_line(plots)


def print_plots_line(plots: list | None) -> None:
    """Where `report` drew its figures, or why it drew none (None: no matplotlib)."""
    if plots is None:
        stderr.print("no plots: matplotlib is not installed (pip install 'golabels[plots]')", markup=False)
    elif plots:
        stderr.print("plots: " + ", ".join(str(p) for p in plots), markup=False)


def _print_overview(record) -> None:
    cfg, summary = record.config, record.summary
    overview = _two_columns(f"golabels report: {record.run_dir}")
    taught = f", taught by {cfg['teacher']}" if cfg.get("teacher") else ""
    overview.add_row("method", f"{cfg.get('method')} with {cfg.get('domain_labels')} domain labels{taught}, backbone {cfg.get('backbone')}")
    total = cfg.get("iters")
    if summary is not None:
        overview.add_row("status", f"finished: {summary['iters']} iterations in {summary['seconds']:.0f}s on {summary['device']}")
        if summary.get("environment"):  # runs written before golabels recorded it have none
            overview.add_row("environment", environment_line(summary["environment"]))
    else:
        overview.add_row("status", f"not finished: metrics up to iteration {record.iteration} of {total} "
                         f"(resume with golabels adapt --resume {record.run_dir})")
    if summary is not None:
        sel = summary["selected"]
        overview.add_row(run_files.MODEL, f"iteration {sel['iter']} (--select {sel['by']})")
        if summary.get("calibration"):
            overview.add_row("confidences", calibrated_row(summary["calibration"]))
        if summary["target_acc"] is not None:
            overview.add_row("target accuracy", f"{summary['target_acc']:.4f} (oracle: --eval-dir labels)")
    remedies = remedy_flags(cfg)
    if remedies:
        estimated = cfg.get("balance_target") or cfg.get("label_shift_weights")
        overview.add_row("label-shift remedies", " ".join(remedies) + (f" (estimates every {cfg.get('refresh_every')} iterations)"
                                                                       if estimated else ""))
    estimate = (summary or {}).get("target_estimate")
    if estimate:
        classes = summary["classes"]
        top = sorted(range(len(classes)), key=lambda i: -estimate["target_prior"][i])[:3]
        overview.add_row("target estimate", f"iteration {estimate['iter']}: most frequent "
                         + ", ".join(f"{classes[i]!r} {estimate['target_prior'][i]:.0%}" for i in top)
                         + f"; pseudo-labels per class {min(estimate['pseudo_label_counts'])}–{max(estimate['pseudo_label_counts'])}")
        if estimate.get("class_weights"):
            overview.add_row("source class weights", f"{min(estimate['class_weights']):.2f}–{max(estimate['class_weights']):.2f}")
    stdout.print(overview)


def _print_data(data: dict) -> None:
    for line in data_report_lines(data, sum(data["held_out_per_class"].values())):
        stdout.print(line, markup=False)
    per_class = data["source_per_class"]
    if len(per_class) <= 40:
        table = Table(title="source images per class")
        table.add_column("class")
        table.add_column("images", justify="right")
        table.add_column("held out", justify="right")
        for name, n in per_class.items():
            table.add_row(name, str(n), str(data["held_out_per_class"][name]))
        stdout.print(table)
    for warning in data["warnings"]:
        stdout.print(f"warning: {warning}", markup=False)


# The training table's columns, each with its cell; the least telling are left out first at a narrow width.
TRAINING_COLUMNS: dict[str, Callable[[dict], str]] = {
    "iter": lambda r: str(r["iter"]),
    "loss cls": lambda r: fmt(r.get("loss_cls")),
    "loss adv": lambda r: fmt(r.get("loss_adv")),
    "tgt loss": lambda r: fmt(r.get("loss_target")),
    "teacher": lambda r: fmt(r.get("loss_teacher")),
    "disc acc": lambda r: fmt(r.get("disc_acc"), ".2f"),
    "disc src/tgt": lambda r: f"{fmt(r.get('disc_acc_src'), '.2f')}/{fmt(r.get('disc_acc_tgt'), '.2f')}",
    "relabeled src/tgt": lambda r: f"{fmt(r.get('relabeled_src'), '.2f')}/{fmt(r.get('relabeled_tgt'), '.2f')}",
    "adv grad": lambda r: fmt(r.get("adv_grad_norm")),
    "lr": lambda r: f"{r['lr']:.2e}",
}
TRAINING_LEAST_TELLING = ["adv grad", "lr", "disc src/tgt", "relabeled src/tgt", "teacher", "tgt loss", "loss adv", "disc acc"]


def _training_columns(rows: list[dict], domain_labels: str | None) -> list[str]:
    """The columns that say something in this run: none that is empty throughout, and no
    relabeled fractions under fixed domain labels (always 0 there)."""
    keys = {"loss adv": "loss_adv", "tgt loss": "loss_target", "teacher": "loss_teacher", "disc acc": "disc_acc",
            "disc src/tgt": "disc_acc_src",
            "relabeled src/tgt": "relabeled_src", "adv grad": "adv_grad_norm"}
    shown = [name for name in TRAINING_COLUMNS if name not in keys or any(r.get(keys[name]) is not None for r in rows)]
    return [name for name in shown if not (name == "relabeled src/tgt" and domain_labels == "fixed")]


def _print_training(rows: list[dict], domain_labels: str | None = None) -> None:
    step = max(1, len(rows) // 10)
    shown = rows[step - 1::step]
    if shown[-1] is not rows[-1]:
        shown.append(rows[-1])

    def build(columns: list[str]) -> Table:
        table = Table(title="training (metrics.jsonl, every row's mean over its window)")
        for name in columns:
            table.add_column(name, justify="right")
        for r in shown:
            table.add_row(*(TRAINING_COLUMNS[name](r) for name in columns))
        return table

    columns = _training_columns(rows, domain_labels)
    _print_fitted(*fitted(build, columns, [c for c in TRAINING_LEAST_TELLING if c in columns]))


def _print_validators(evals: list[dict], selected: int | None) -> None:
    from .report import MIN_SNAPSHOTS, correlations
    from .validators import DIRECTION, LEAST_TELLING_FIRST

    keys = [k for k in VALIDATOR_NAMES if any(e.get(k) is not None for e in evals)]
    oracle = "; target-acc: the oracle, from --eval-dir's labels" if "target_acc" in keys else ""
    shift = any(e.get("predicted_shift") is not None for e in evals)
    names = {**{VALIDATOR_NAMES[k]: k for k in keys}, **({"shift": "predicted_shift"} if shift else {})}

    def build(columns: list[str]) -> Table:
        table = Table(title=f"validators per evaluated snapshot (* = model.safetensors; ↑ higher is better, ↓ lower{oracle}; "
                            "shift: the label-shift reading)")
        table.add_column("iter", justify="right")
        for name in columns:
            key = names[name]
            # shift: the label-shift reading's total variation (docs/label-shift.md)
            table.add_column(name if key == "predicted_shift" else f"{name}{'↑' if DIRECTION[key] else '↓'}", justify="right")
        for e in evals:
            table.add_row(f"{'*' if e['iter'] == selected else ''}{e['iter']}",
                          *(fmt(e.get(names[n]), ".3f" if names[n] == "predicted_shift" else ".4f") for n in columns))
        return table

    # Left out first at a narrow width: the reading and validators measured least telling (docs/selection.md).
    _print_fitted(*fitted(build, list(names), [n for n in ("shift", *LEAST_TELLING_FIRST) if n in names]))
    rho = {k: v for k, v in correlations(evals).items() if v is not None}
    if rho:
        stdout.print("Spearman correlation with target accuracy over these snapshots (validators oriented higher-is-better): "
                     + ", ".join(f"{VALIDATOR_NAMES[k]} {v:+.2f}" for k, v in rho.items()), markup=False)
    elif (scored := sum(e.get("target_acc") is not None for e in evals)) >= MIN_SNAPSHOTS:
        stdout.print("Spearman correlation with target accuracy: not defined (it, or every validator, is the same at every snapshot)")
    elif scored >= 2:
        stdout.print(f"Spearman correlation with target accuracy: not shown from {scored} snapshots ({MIN_SNAPSHOTS} or more "
                     "needed: a smaller --eval-every gives more)", markup=False)


def _candidate_table(title: str, rows: list[dict[str, Any]], shipped: str | None, members: list[str]) -> tuple[Table, list[str]]:
    """One row per candidate of --method auto: its validators at its last evaluation, its --eval-dir
    accuracy (the oracle, when given) and its seconds; the shipped ones marked."""
    keys = LABEL_FREE
    oracle = any(r.get("target_acc") is not None for r in rows)

    def build(columns: list[str]) -> Table:
        table = Table(title=title)
        table.add_column("recipe", overflow="fold")
        table.add_column("shipped", no_wrap=True)
        for name in columns:
            table.add_column(name, justify="right", no_wrap=True)
        if oracle:
            table.add_column("target-acc", justify="right", no_wrap=True)
        table.add_column("seconds", justify="right", no_wrap=True)
        for r in rows:
            mark = ("yes" if r["recipe"] == shipped else "in the ensemble" if shipped == "ensemble" and r["recipe"] in members
                    else "its teacher" if shipped == "student" and r["recipe"] in members else "")
            values = r.get("validators") or {}
            cells = [fmt(values.get(k), ".4f") for k in keys if VALIDATOR_NAMES[k] in columns]
            acc = [fmt(r.get("target_acc"), ".4f")] if oracle else []
            seconds = f"{r['seconds']:.0f}" if isinstance(r.get("seconds"), (int, float)) else r.get("status", "")
            table.add_row(r["recipe"], mark, *cells, *acc, seconds)
        return table

    return fitted(build, [VALIDATOR_NAMES[k] for k in keys], [n for n in LEAST_TELLING_FIRST if n != "target-acc"])


def print_search_summary(summary: dict[str, Any]) -> None:
    """adapt --method auto's result: what ships and why, and every candidate beside it."""
    search = summary["search"]
    table = _two_columns(f"golabels adapt --method auto: {summary['run_dir']}")
    table.add_row("shipped", search["why"] + f" (--search-pick {search['pick']})")
    table.add_row("backbone", summary["backbone"])
    table.add_row("iterations", f"{summary['iters']} per candidate; {summary['seconds']:.1f}s of training over "
                  f"{len(search['candidates'])} candidates on {summary['device']}")
    if summary.get("target_acc") is not None:
        reference = (f"; source-only {search['source_only_acc']:.4f}" if search.get("source_only_acc") is not None else "")
        table.add_row("target accuracy", f"{summary['target_acc']:.4f} (mean per class {summary['target_mean_class_acc']:.4f}; "
                      f"--eval-dir labels, never used to choose){reference}")
    if summary.get("calibration"):
        table.add_row("confidences", calibrated_row(summary["calibration"]))
    table.add_row("candidates", f"{run_files.SEARCH_CANDIDATES}/<recipe> in {summary['run_dir']}: each a run of its own (golabels report)"
                  + (f"; the student in {run_files.SEARCH_STUDENT}/, taught by {run_files.SEARCH_TEACHER}" if "student" in search else ""))
    stdout.print(table)
    _print_fitted(*_candidate_table("candidates (validators at each one's last evaluation)", search_rows(search),
                                    search["shipped"], search["members"]))


def search_rows(search: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates' rows of a finished search, and with --search-pick student its teacher's
    (the ensemble of its members, as the student's run scored it) and the student's."""
    rows = list(search["candidates"])
    if "student" in search:
        teacher = search.get("teacher") or {}
        rows.append({"recipe": f"teacher: the ensemble of {len(teacher.get('members') or [])}", "validators": teacher.get("validators"),
                     "target_acc": teacher.get("target_acc"), "seconds": None, "status": ""})
        rows.append(search["student"])
    return rows


def print_search_report(record) -> None:
    """`golabels report` of a --method auto run: the search's state, or its result."""
    overview = _two_columns(f"golabels report: {record.run_dir}")
    cfg, summary = record.config, record.summary
    overview.add_row("method", f"auto over {cfg.get('search_recipes')}, --search-pick {cfg.get('search_pick')}, backbone "
                               f"{cfg.get('backbone')}")
    if summary is None:
        done = sum(1 for _, run in record.candidates if run is not None and run.finished)
        overview.add_row("status", f"not finished: {done} of {len(record.candidates)} candidates done "
                         f"(resume with golabels adapt --resume {record.run_dir})")
    else:
        search = summary["search"]
        overview.add_row("status", f"finished: {summary['iters']} iterations per candidate, {summary['seconds']:.0f}s of training")
        if summary.get("environment"):
            overview.add_row("environment", environment_line(summary["environment"]))
        overview.add_row(run_files.MODEL, search["why"])
        if summary.get("calibration"):
            overview.add_row("confidences", calibrated_row(summary["calibration"]))
        if summary.get("target_acc") is not None:
            overview.add_row("target accuracy", f"{summary['target_acc']:.4f} (oracle: --eval-dir labels)")
    stdout.print(overview)
    if summary is not None:
        rows, shipped, members = search_rows(summary["search"]), summary["search"]["shipped"], summary["search"]["members"]
    else:
        rows, shipped, members = [], None, []
        for recipe, run in record.candidates:
            last = run.evals[-1] if run is not None and run.finished and run.evals else {}
            status = "done" if run is not None and run.finished else f"at {run.iteration}" if run is not None else "not started"
            rows.append({"recipe": recipe, "validators": last, "target_acc": (run.summary or {}).get("target_acc") if run else None,
                         "seconds": (run.summary or {}).get("seconds") if run else None, "status": status})
    _print_fitted(*_candidate_table("candidates (validators at each one's last evaluation)", rows, shipped, members))
    stdout.print(f"each candidate's own report: golabels report {record.run_dir}/{run_files.SEARCH_CANDIDATES}/<recipe>"
                 + (f"; the student's: golabels report {record.run_dir}/{run_files.SEARCH_STUDENT}"
                    if record.config.get("search_pick") == "student" else ""), markup=False)


def print_compare(result: dict[str, Any]) -> None:
    """`golabels compare`: the runs (what differs, validators, accuracy), then each group against the first."""
    from .compare import group_label
    from .options import option_name
    from .validators import DIRECTION

    differing = [k for k in result["differing"] if k not in ("source", "target", "eval_dir")] or result["differing"]
    keys = [k for k in LABEL_FREE if any(k in r["validators"] for r in result["runs"])]
    labelled = result["eval_dir"] is not None

    def build(columns: list[str]) -> Table:
        table = Table(title="golabels compare: the runs (validators at each one's shipped snapshot; ↑ higher is better, ↓ lower)")
        table.add_column("run")
        table.add_column("group", justify="right")
        for name in columns:
            key = next((k for k in keys if VALIDATOR_NAMES[k] == name), None)
            table.add_column(name if key is None else f"{name}{'↑' if DIRECTION[key] else '↓'}",
                             justify="left" if key is None and name != "accuracy [95%]" else "right")
        for r in result["runs"]:
            cells = []
            for name in columns:
                key = next((k for k in keys if VALIDATOR_NAMES[k] == name), None)
                if key is not None:
                    cells.append(fmt(r["validators"].get(key), ".4f"))
                elif name == "accuracy [95%]":
                    low, high = r["interval"]
                    cells.append(f"{100 * r['accuracy']:.2f} [{100 * low:.1f}, {100 * high:.1f}]")
                else:
                    value = r["options"].get(next(k for k in differing if option_name(k) == name))
                    cells.append("null" if value is None else str(value))
            table.add_row(r["run_dir"], str(r["group"]), *cells)
        return table

    columns = [option_name(k) for k in differing] + [VALIDATOR_NAMES[k] for k in keys] + (["accuracy [95%]"] if labelled else [])
    _print_fitted(*fitted(build, columns, [VALIDATOR_NAMES[k] for k in LEAST_TELLING_FIRST if k in keys]))
    if len(result["groups"]) < 2:
        stdout.print("the runs differ in their seeds only: one group" if len(result["runs"]) > 1 else "", markup=False)
        return
    table = Table(title="each group against group 0" + (f", on the same {result['images']} images of {result['eval_dir']}" if labelled
                                                           else " (no --eval-dir: validators only)"))
    table.add_column("group", justify="right")
    table.add_column("options")
    table.add_column("runs", justify="right")
    if labelled:
        table.add_column("accuracy", justify="right")
        table.add_column("difference [95%]", justify="right")
        table.add_column("p (paired)", justify="right")
    for key in keys:
        table.add_column(f"{VALIDATOR_NAMES[key]}{'↑' if DIRECTION[key] else '↓'}", justify="right")
    for g in result["groups"]:
        cells = [str(g["group"]), group_label(g), str(g["runs"])]
        if labelled:
            spread = f" ± {100 * g['std']:.2f}" if g.get("std") is not None else ""
            cells.append(f"{100 * g['accuracy']:.2f}{spread}")
            if "difference" in g:
                low, high = g["difference_interval"]
                cells += [f"{100 * g['difference']:+.2f} [{100 * low:+.1f}, {100 * high:+.1f}]", f"{g['p']:.3g}"]
            else:
                cells += ["(the reference)", ""]
        cells += [fmt(g["validators"].get(k), ".4f") for k in keys]
        table.add_row(*cells)
    stdout.print(table)
    if labelled:
        stdout.print("difference: the group's mean accuracy minus group 0's, on the same images; p: a two-sided paired permutation test "
                     "over those images. The validators' verdict is beside it: on your data, trust the labels.", markup=False)
