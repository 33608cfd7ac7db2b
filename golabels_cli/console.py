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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import GolabelsError, reason

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    logger = logging.getLogger("golabels")
    logger.handlers.clear()
    logger.propagate = False
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else (logging.DEBUG if debug else logging.INFO))


def error_line(exc: BaseException) -> str:
    if isinstance(exc, GolabelsError):
        return f"error: {exc}"
    return f"error: {type(exc).__name__}: {reason(exc)} — rerun with --debug for the traceback"


def print_error(exc: BaseException) -> None:
    # Plain write: an error must reach the user even when rich markup would mangle it.
    sys.stderr.write(error_line(exc) + "\n")
    sys.stderr.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


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

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        getattr(self, f"_{kind}")(data)

    def _start(self, data: dict[str, Any]) -> None:
        self.total = data["iters"]
        self.first_iter = self.last_iter = data.get("start", 0)
        self.started = self.last_plain = time.perf_counter()
        per_class = data["source_per_class"]
        stderr.print(
            f"adapting on {data['device']}: {data['source_images']} source images in {len(per_class)} classes "
            f"(fewest {min(per_class.values())}, most {max(per_class.values())}), {data['target_images']} target images"
        )
        stderr.print(f"run directory: {data['run_dir']}" + (f" (resuming at iteration {self.first_iter} of {self.total})" if self.first_iter else ""))
        if self.live:
            self.bar = Progress(
                TextColumn("adapt"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=stderr, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("adapt", total=self.total, completed=self.first_iter, speed="", stats="")

    def _step(self, data: dict[str, Any]) -> None:
        self.last_iter = data["iter"]
        if self.bar is not None:
            elapsed = time.perf_counter() - self.started
            self.bar.update(self.task, completed=data["iter"], speed=f"{(data['iter'] - self.first_iter) / max(elapsed, 1e-9):.2f} it/s")

    @staticmethod
    def stats_text(row: dict[str, Any]) -> str:
        text = (
            f"cls {_fmt(row['loss_cls'])} adv {_fmt(row['loss_adv'])} disc {_fmt(row['disc_acc'], '.2f')} "
            f"relab s/t {_fmt(row['relabeled_src'], '.2f')}/{_fmt(row['relabeled_tgt'], '.2f')}"
        )
        if "target_acc" in row:
            text += f" tgt-acc {row['target_acc']:.3f}"
        return text

    def _log(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, stats=self.stats_text(row))
            if "target_acc" in row:
                self.bar.console.print(f"iter {row['iter']}: target accuracy {row['target_acc']:.4f} (eval-dir)")
            return
        now = time.perf_counter()
        if now - self.last_plain >= self.PLAIN_INTERVAL_S or row["iter"] == self.total or "target_acc" in row:
            self.last_plain = now
            elapsed = now - self.started
            speed = (row["iter"] - self.first_iter) / max(elapsed, 1e-9)
            eta = (self.total - row["iter"]) / max(speed, 1e-9)
            sys.stderr.write(
                f"iter {row['iter']}/{self.total} {speed:.2f} it/s eta {eta:.0f}s lr {row['lr']:.2e} lambda {row['lambda']:.3f} "
                f"{self.stats_text(row)}\n"
            )
            sys.stderr.flush()

    def _end(self, summary: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_adapt_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"golabels adapt: {summary['run_dir']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("method", f"{summary['method']} with {summary['domain_labels']} domain labels")
    table.add_row("backbone", summary["backbone"])
    table.add_row("iterations", f"{summary['iters']} in {summary['seconds']:.1f}s ({summary['images_per_s']:.0f} images/s on {summary['device']})")
    images, skipped = summary["images"], summary["skipped"]
    table.add_row("images", f"source {images['source']}, target {images['target']}" + (f", eval {images['eval']}" if images["eval"] else ""))
    if any(skipped.values()):
        table.add_row("skipped", ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    final = summary["final"]
    table.add_row("final losses", f"classification {_fmt(final['loss_cls'])}, adversarial {_fmt(final['loss_adv'])}")
    if final["disc_acc"] is not None:
        table.add_row("discriminator", f"accuracy {final['disc_acc']:.3f}, relabeled source {final['relabeled_src']:.3f} / target {final['relabeled_tgt']:.3f}")
    if summary["target_acc"] is not None:
        table.add_row("target accuracy", f"{summary['target_acc']:.4f} (mean per class {summary['target_mean_class_acc']:.4f})")
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
