"""Everything the user sees: a rich console on stderr, results on stdout, one-line errors.

Library modules report through `logging` and progress callbacks; only this module and `cli`
write to the terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from rich.table import Table

from .errors import GolabelsError, reason
from .progress import DataRead, RowLogged, RunEvent, RunFinished, RunStarted, StepDone
from .remedies import remedy_flags

# soft_wrap: a long line is one line in a log file (a terminal wraps it on screen by itself).
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def one_line(text: str) -> str:
    """Control characters (a newline in a file name) written as escapes: a message stays one line."""
    return text.translate(_CONTROL)


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = one_line(record.getMessage()), None
        return True


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    logger = logging.getLogger("golabels")
    logger.handlers.clear()
    logger.propagate = False
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_OneLine())
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else (logging.DEBUG if debug else logging.INFO))


def error_line(exc: BaseException) -> str:
    if isinstance(exc, GolabelsError):
        return one_line(f"error: {exc}")
    return one_line(f"error: {type(exc).__name__}: {reason(exc)} — rerun with --debug for the traceback")


def print_error(exc: BaseException) -> None:
    # Plain write: an error must reach the user even when rich markup would mangle it.
    sys.stderr.write(error_line(exc) + "\n")
    sys.stderr.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


VALIDATOR_NAMES = {"src_acc": "src-acc", "entropy": "entropy", "im": "im", "snd": "snd", "dev": "dev", "target_acc": "target-acc"}


def _size_text(sizes: dict[str, list[int]] | None) -> str:
    if not sizes:
        return "-"
    (w0, wm, w1), (h0, hm, h1) = sizes["width"], sizes["height"]
    if (w0, h0) == (w1, h1):
        return f"all {w0}x{h0}"
    return f"{w0}..{w1} x {h0}..{h1} (median {wm}x{hm})"


def data_report_lines(report: dict[str, Any], held_out: int) -> list[str]:
    """The start-of-run data report, a few lines (warnings are logged by the library)."""
    per_class = report["source_per_class"]
    small = min(per_class, key=per_class.get)
    big = max(per_class, key=per_class.get)
    if per_class[small] == per_class[big]:
        spread = f"{per_class[small]} each"
    else:
        spread = f"fewest {per_class[small]} in {small!r}, most {per_class[big]} in {big!r}: imbalance {report['imbalance_ratio']:.1f}:1"
    return [
        f"source: {report['source_images']} images in {len(per_class)} classes ({spread}); {held_out} held out for validation; "
        f"sizes {_size_text(report['source_sizes'])}" + (f"; {report['skipped']['source']} unreadable skipped" if report["skipped"]["source"] else ""),
        f"target: {report['target_images']} images; sizes {_size_text(report['target_sizes'])}"
        + (f"; {report['skipped']['target']} unreadable skipped" if report["skipped"]["target"] else ""),
    ]


class _TwoLineProgress(Progress):
    """A bar whose counter, rate and ETA stay visible at 80 columns: the training figures go on
    a line of their own under it, cut to the terminal's width."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            line = task.fields.get("stats") or ""
            if line:
                yield Text(line, no_wrap=True, overflow="ellipsis")


class AdaptProgress:
    """The progress callback for adapt(): a live bar on a TTY, plain periodic lines otherwise."""

    PLAIN_INTERVAL_S = 10.0

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live = stderr.is_terminal and not quiet
        self.bar: Progress | None = None
        self.task = None
        self.total = 0
        self.started = 0.0
        self.last_plain = 0.0
        self.last_iter = 0
        self.first_iter = 0  # where this session started: > 0 when resumed
        self.last_stats = ""  # the figures of the newest metrics row, shown under the bar

    def __call__(self, event: RunEvent) -> None:
        if self.quiet:
            return
        if isinstance(event, DataRead):
            self._data(event)
        elif isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, StepDone):
            self._step(event.iter)
        elif isinstance(event, RowLogged):
            self._log(event.row)
        elif isinstance(event, RunFinished):
            self.close()

    def _start(self, event: RunStarted) -> None:
        self.total = event.iters
        self.first_iter = self.last_iter = event.start
        self.started = self.last_plain = time.perf_counter()
        stderr.print(f"adapting on {event.device}; run directory: {event.run_dir}"
                     + (f" (resuming at iteration {self.first_iter} of {self.total})" if self.first_iter else ""), markup=False)
        if self.live:
            self.bar = _TwoLineProgress(
                TextColumn("adapt"), BarColumn(bar_width=20), MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=stderr, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("adapt", total=self.total, completed=self.first_iter, speed="", stats="")

    def _data(self, event: DataRead) -> None:
        for line in data_report_lines(event.report, event.held_out):
            stderr.print(line, markup=False)

    def _step(self, it: int) -> None:
        self.last_iter = it
        if self.bar is not None:
            elapsed = time.perf_counter() - self.started
            self.bar.update(self.task, completed=it, speed=f"{(it - self.first_iter) / max(elapsed, 1e-9):.2f} it/s")

    @staticmethod
    def stats_text(row: dict[str, Any]) -> str:
        text = (
            f"cls {_fmt(row['loss_cls'])} adv {_fmt(row['loss_adv'])} disc {_fmt(row['disc_acc'], '.2f')} "
            f"relab s/t {_fmt(row['relabeled_src'], '.2f')}/{_fmt(row['relabeled_tgt'], '.2f')}"
        )
        if row.get("loss_target") is not None:  # the recipe's losses on the target's predictions
            text += f" tgt-loss {_fmt(row['loss_target'])}"
        if "target_acc" in row:
            text += f" tgt-acc {row['target_acc']:.3f}"
        return text

    @staticmethod
    def eval_text(row: dict[str, Any]) -> str:
        parts = [f"{name} {_fmt(row.get(key), '.4f')}" for key, name in VALIDATOR_NAMES.items() if key in row and key != "target_acc"]
        if row.get("predicted_shift") is not None:  # the reading the label-shift warning uses
            parts.append(f"| label shift {row['predicted_shift']:.3f}")
        if "target_acc" in row:
            parts.append(f"| target-acc {row['target_acc']:.4f} (oracle: --eval-dir labels)")
        return f"iter {row['iter']}: " + " ".join(parts)

    def show_step(self, text: str | None) -> bool:
        """A slow step inside training (an evaluation), shown on the bar's second line; False
        when there is no live bar to show it on."""
        if self.bar is None:
            return False
        self.bar.update(self.task, stats=text if text is not None else self.last_stats)
        return True

    def _log(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.last_stats = self.stats_text(row)
            self.bar.update(self.task, stats=self.last_stats)
            if "snd" in row:
                self.bar.console.print(self.eval_text(row), markup=False)
            return
        now = time.perf_counter()
        if "snd" in row:
            sys.stderr.write(self.eval_text(row) + "\n")
        if now - self.last_plain >= self.PLAIN_INTERVAL_S or row["iter"] == self.total or "snd" in row:
            self.last_plain = now
            elapsed = now - self.started
            speed = (row["iter"] - self.first_iter) / max(elapsed, 1e-9)
            eta = (self.total - row["iter"]) / max(speed, 1e-9)
            sys.stderr.write(
                f"iter {row['iter']}/{self.total} {speed:.2f} it/s eta {eta:.0f}s lr {row['lr']:.2e} lambda {row['lambda']:.3f} "
                f"{self.stats_text(row)}\n"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class StepProgress:
    """The listener of progress.tracked: a transient bar per step on a TTY (on adapt's own bar
    while one is live), otherwise a plain line every PLAIN_INTERVAL_S; and a closing line for each
    step that took QUIET_BELOW_S or more, unless adapt's live bar showed it."""

    PLAIN_INTERVAL_S = 10.0
    QUIET_BELOW_S = 2.0

    def __init__(self, adapt: AdaptProgress | None = None, closing: bool = True):
        self.adapt = adapt
        self.closing = closing
        self.live = stderr.is_terminal
        self.bar: Progress | None = None
        self.steps: dict[str, list] = {}  # what -> [started, time of the last plain line, bar task]

    def __call__(self, what: str, done: int, total: int | None, finished: bool) -> None:
        now = time.perf_counter()
        if what not in self.steps:
            self.steps[what] = [now, now, None]
        started, last, task = self.steps[what]
        shown_by_adapt = self.adapt is not None and self.adapt.show_step(None if finished else f"{what}: {done}/{total or '?'} images")
        if finished:
            del self.steps[what]
            if task is not None and self.bar is not None:
                self.bar.remove_task(task)
                if not self.steps:
                    self.bar.stop()
                    self.bar = None
            seconds = now - started
            # A step shorter than QUIET_BELOW_S needed no feedback, and a line would crowd out what
            # matters (a bad input's one-line error after a quick scan).
            if self.closing and not shown_by_adapt and seconds >= self.QUIET_BELOW_S:
                stderr.print(f"{what}: {done} images in {seconds:.1f}s ({done / max(seconds, 1e-9):.0f}/s)", markup=False)
            return
        if shown_by_adapt:
            return
        if self.live:
            if self.bar is None:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                    TaskProgressColumn(), TextColumn("eta"), TimeRemainingColumn(), console=stderr, transient=True)
                self.bar.start()
            if task is None:
                self.steps[what][2] = self.bar.add_task(what, total=total)
            else:
                self.bar.update(task, completed=done)
        elif done and now - last >= self.PLAIN_INTERVAL_S:
            self.steps[what][1] = now
            rate = done / max(now - started, 1e-9)
            left = f", eta {(total - done) / max(rate, 1e-9):.0f}s" if total else ""
            sys.stderr.write(f"{what}: {done}/{total or '?'} images, {rate:.0f}/s{left}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_adapt_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"golabels adapt: {summary['run_dir']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    bn = {"target": "; BatchNorm statistics of the target", "train": ""}.get(summary.get("bn_stats") or "train", "")
    table.add_row("method", f"{summary['method']} with {summary['domain_labels']} domain labels{bn}")
    table.add_row("backbone", summary["backbone"])
    where = summary["device"] + (f", {summary['processes']} processes" if summary.get("processes", 1) > 1 else "")
    if summary.get("resumed_at"):
        table.add_row("iterations", f"{summary['iters']} in {summary['seconds']:.1f}s over several sessions; this one: iterations "
                      f"{summary['resumed_at'] + 1}-{summary['iters']} in {summary['session_seconds']:.1f}s ({summary['images_per_s']:.0f} images/s on {where})")
    else:
        table.add_row("iterations", f"{summary['iters']} in {summary['seconds']:.1f}s ({summary['images_per_s']:.0f} images/s on {where})")
    images, skipped = summary["images"], summary["skipped"]
    table.add_row("images", f"source {images['source']}, target {images['target']}" + (f", eval {images['eval']}" if images["eval"] else ""))
    if any(skipped.values()):
        table.add_row("skipped", ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    final, selected = summary["final"], summary["selected"]
    # Training's figures are of its last iteration, whichever snapshot is shipped: say so when they differ.
    at = f" (iteration {summary['iters']})" if selected["by"] != "last" and selected["iter"] != summary["iters"] else ""
    on_target = f", on the target's predictions {_fmt(final['loss_target'])}" if final.get("loss_target") is not None else ""
    table.add_row("final losses", f"classification {_fmt(final['loss_cls'])}, adversarial {_fmt(final['loss_adv'])}{on_target}{at}")
    if final["disc_acc"] is not None:
        grad = f", adversarial gradient {final['adv_grad_norm']:.3g}" if final.get("adv_grad_norm") is not None else ""
        table.add_row("discriminator", f"accuracy {final['disc_acc']:.3f}, relabeled source {final['relabeled_src']:.3f} / target {final['relabeled_tgt']:.3f}{grad}{at}")
    if selected["by"] != "last":
        table.add_row("model", f"the snapshot of iteration {selected['iter']}, selected by {selected['by']}"
                      + (f" ({selected['value']:.4f})" if selected["value"] is not None else " (not computable: the last)"))
    final = next((e for e in summary["evals"] if e["iter"] == selected["iter"]), None)
    if final:
        shipped = f" (iteration {selected['iter']}, the shipped snapshot)" if at else ""
        table.add_row("validators", " ".join(f"{name} {_fmt(final.get(key), '.4f')}" for key, name in VALIDATOR_NAMES.items() if key != "target_acc") + shipped)
    if summary["target_acc"] is not None:
        table.add_row("target accuracy", f"{summary['target_acc']:.4f} (mean per class {summary['target_mean_class_acc']:.4f}; --eval-dir labels)")
    if summary.get("results_figure"):
        table.add_row("plots", f"{summary['run_dir']}/{summary['results_figure']}")
    stdout.print(table)


def print_eval(result, title: str) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("correct", justify="right")
    table.add_column("accuracy", justify="right")
    for row in result.per_class:
        table.add_row(row.name, str(row.images), str(row.correct), f"{row.accuracy:.4f}")
    stdout.print(table)
    stdout.print(f"top-1 accuracy {result.accuracy:.4f} on {result.images} images; mean per-class accuracy {result.mean_class_accuracy:.4f}")
    if result.skipped:
        stdout.print(f"{result.skipped} unreadable images skipped")
    if len(result.predicted_classes) <= 12:
        confusion = Table(title="confusion (rows: true, columns: predicted)")
        confusion.add_column("")
        for name in result.predicted_classes:
            confusion.add_column(name, justify="right")
        for name, row in zip(result.true_classes, result.confusion):
            confusion.add_row(name, *map(str, row))
        stdout.print(confusion)


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
        _print_training(record.rows)
    if record.evals:
        _print_validators(record.evals, (record.summary or {}).get("selected", {}).get("iter"))
    if not plots_wanted:
        return
    if plots is None:
        stderr.print("no plots: matplotlib is not installed (pip install 'golabels[plots]')", markup=False)
    elif plots:
        stderr.print("plots: " + ", ".join(str(p) for p in plots), markup=False)


def _print_overview(record) -> None:
    cfg, summary = record.config, record.summary
    overview = Table(title=f"golabels report: {record.run_dir}", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value")
    overview.add_row("method", f"{cfg.get('method')} with {cfg.get('domain_labels')} domain labels, backbone {cfg.get('backbone')}")
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
        overview.add_row("model.safetensors", f"iteration {sel['iter']} (--select {sel['by']})")
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


def _print_training(rows: list[dict]) -> None:
    step = max(1, len(rows) // 10)
    shown = rows[step - 1::step]
    if shown[-1] is not rows[-1]:
        shown.append(rows[-1])
    table = Table(title="training (metrics.jsonl, every row's mean over its window)")
    for name in ("iter", "loss cls", "loss adv", "disc acc", "disc src/tgt", "relabeled src/tgt", "adv grad", "lr"):
        table.add_column(name, justify="right")
    for r in shown:
        table.add_row(str(r["iter"]), _fmt(r.get("loss_cls")), _fmt(r.get("loss_adv")), _fmt(r.get("disc_acc"), ".2f"),
                      f"{_fmt(r.get('disc_acc_src'), '.2f')}/{_fmt(r.get('disc_acc_tgt'), '.2f')}",
                      f"{_fmt(r.get('relabeled_src'), '.2f')}/{_fmt(r.get('relabeled_tgt'), '.2f')}", _fmt(r.get("adv_grad_norm")),
                      f"{r['lr']:.2e}")
    stdout.print(table)


def _print_validators(evals: list[dict], selected: int | None) -> None:
    from .report import MIN_SNAPSHOTS, correlations
    from .validators import DIRECTION

    keys = [k for k in VALIDATOR_NAMES if any(e.get(k) is not None for e in evals)]
    oracle = "; target-acc: the oracle, from --eval-dir's labels" if "target_acc" in keys else ""
    table = Table(title=f"validators per evaluated snapshot (* = model.safetensors; ↑ higher is better, ↓ lower{oracle}; "
                        "shift: the label-shift reading)")
    table.add_column("iter", justify="right")
    for k in keys:
        table.add_column(f"{VALIDATOR_NAMES[k]}{'↑' if DIRECTION[k] else '↓'}", justify="right")
    shift = any(e.get("predicted_shift") is not None for e in evals)
    if shift:
        table.add_column("shift", justify="right")  # the label-shift reading's total variation (docs/label-shift.md)
    for e in evals:
        table.add_row(f"{'*' if e['iter'] == selected else ''}{e['iter']}", *(_fmt(e.get(k), ".4f") for k in keys),
                      *([_fmt(e.get("predicted_shift"), ".3f")] if shift else []))
    stdout.print(table)
    rho = {k: v for k, v in correlations(evals).items() if v is not None}
    if rho:
        stdout.print("Spearman correlation with target accuracy over these snapshots (validators oriented higher-is-better): "
                     + ", ".join(f"{VALIDATOR_NAMES[k]} {v:+.2f}" for k, v in rho.items()), markup=False)
    elif (scored := sum(e.get("target_acc") is not None for e in evals)) >= MIN_SNAPSHOTS:
        stdout.print("Spearman correlation with target accuracy: not defined (it, or every validator, is the same at every snapshot)")
    elif scored >= 2:
        stdout.print(f"Spearman correlation with target accuracy: not shown from {scored} snapshots ({MIN_SNAPSHOTS} or more "
                     "needed: a smaller --eval-every gives more)", markup=False)


def usage_error_line(exc) -> str:
    """`error: MESSAGE — HINT` for a usage error click found (an unknown option, a value of the wrong type)."""
    import re

    command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "golabels"
    message = exc.format_message()
    extra = re.search(r"unexpected extra argument(?:s|\(s\))? \((.*)\)", message)
    pairs = [a for a in (extra.group(1).split() if extra else []) if re.fullmatch(r"[a-z][a-z0-9_-]*=.*", a)]
    if pairs:
        key, value = pairs[0].split("=", 1)
        hint = f"options are written --{key.replace('_', '-')} {value}, not {pairs[0]}"
    else:
        hint = f"see `{command} --help`"
    return one_line(f"error: {message} — {hint}")
