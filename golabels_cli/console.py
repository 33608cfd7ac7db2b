"""Everything the user sees: a rich console on stderr, results on stdout, one-line errors.

Library modules report through `logging` and progress callbacks; only this module and `cli`
write to the terminal.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import textwrap
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .errors import GolabelsError, plural, reason
from .formats import json_text
from .validators import NAMES, is_evaluation_row, shipped_evaluation
from .progress import CandidateStarted, DataRead, FrozenPathHint, RowLogged, RunEvent, RunFinished, RunStarted, StepDone


def _console(stream_is_stderr: bool) -> Console:
    """On a terminal, lines wrap between words at its width; piped, a line stays one line (a log
    file, grep) and tables take the width they need, not rich's 80 columns, unless $COLUMNS says."""
    console = Console(stderr=stream_is_stderr, highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
        if not os.environ.get("COLUMNS"):
            console.width = PIPED_WIDTH
    return console


PIPED_WIDTH = 1000
stderr = _console(True)
stdout = _console(False)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def one_line(text: str) -> str:
    """Control characters (a newline in a file name) written as escapes: a message stays one line."""
    return text.translate(_CONTROL)


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = one_line(record.getMessage()), None
        return True


class _SaidOnce(logging.Filter):
    """During a search (AdaptProgress sets `said`), a line said before is not said again: each
    candidate's run would repeat the random-backbone warning, the cache lines and the decoding."""

    said: set[tuple[int, str]] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if _SaidOnce.said is None or record.levelno >= logging.ERROR:
            return True
        key = (record.levelno, record.getMessage())
        if key in _SaidOnce.said:
            return False
        _SaidOnce.said.add(key)
        return True


class _ConsoleHandler(logging.Handler):
    """Log records as the rest of golabels' lines read: info plain, `warning: ...`, `error: ...`;
    through the stderr console, so a live progress bar stays below them."""

    PREFIX = {logging.DEBUG: "debug: ", logging.INFO: "", logging.WARNING: "warning: ", logging.ERROR: "error: ",
              logging.CRITICAL: "error: "}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.PREFIX.get(record.levelno, "") + self.format(record)
            if stderr.is_terminal:
                stderr.print(text, markup=False, style="yellow" if record.levelno >= logging.WARNING else None)
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    logger = logging.getLogger("golabels")
    logger.handlers.clear()
    logger.propagate = False
    handler = _ConsoleHandler()
    handler.addFilter(_OneLine())
    handler.addFilter(_SaidOnce())
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
    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


def fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


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
        f"sizes {_size_text(report['source_sizes'])}"
        + (f"; {report['skipped']['source']} skipped (warned above)" if report["skipped"]["source"] else ""),
        f"target: {report['target_images']} images; sizes {_size_text(report['target_sizes'])}"
        + (f"; {report['skipped']['target']} skipped (warned above)" if report["skipped"]["target"] else ""),
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


# What each figure of the progress line means: shown once, at the start, for the terms of the run.
LEGEND = {
    "cls": "cls: classification loss on the source",
    "adv": "adv: the discriminator's loss (about 0.69 when it cannot tell the domains apart)",
    "disc": "disc: its accuracy (0.5: the domains are aligned)",
    "relab": "relab s/t: share of source/target rows whose domain label was changed (--domain-labels)",
    "tgt-loss": "tgt-loss: the losses on the target's predictions",
    "teach": "teach: cross-entropy to the teacher's labels of the target (--teacher)",
    "tgt-acc": "tgt-acc: --eval-dir accuracy",
}


def duration(seconds: float) -> str:
    """42s, 12 min, 3.5 h, 2.1 days: as precise as an estimate deserves."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class AdaptProgress:
    """The progress callback for adapt(): a live bar on a TTY, plain periodic lines otherwise."""

    PLAIN_INTERVAL_S = 10.0
    # The rate and ETA are over the last RECENT_S seconds: the first steps (allocations, a probe,
    # the hint's measurement) and a change of pace (other work on the cores) would otherwise skew
    # the estimate for the whole run.
    RECENT_S = 30.0

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, iteration), oldest first
        self.live = stderr.is_terminal and not quiet
        self.bar: Progress | None = None
        self.task = None
        self.total = 0
        self.started = 0.0
        self.last_plain = 0.0
        self.last_iter = 0
        self.first_iter = 0  # where this session started: > 0 when resumed
        self.last_stats = ""  # the figures of the newest metrics row, shown under the bar
        self.last_row: dict[str, Any] | None = None
        self.terms: tuple[str, ...] = tuple(LEGEND)
        self.data_shown = False  # a search's candidates read the same folders: their report once
        # In a search (after its first CandidateStarted): what is common is said once, each candidate
        # gets its start line, its progress and one result line, and the lines fit SEARCH_COLUMNS.
        self.candidate: CandidateStarted | None = None
        self.explained: set[str] = set()  # the progress terms the legend has explained in this search
        _SaidOnce.said = None  # a new command: whatever an earlier one in this process said (a search stopped midway) is forgotten

    def __call__(self, event: RunEvent) -> None:
        if self.quiet:
            return
        if isinstance(event, DataRead):
            if not self.data_shown:
                self._data(event)
            self.data_shown = True
        elif isinstance(event, CandidateStarted):
            self.close()
            if self.candidate is None:
                _SaidOnce.said = set()
            self.candidate = event
            left = f"; the search: about {duration(event.seconds_left)} left" if event.seconds_left is not None else ""
            stderr.print(f"--method auto: candidate {event.index + 1} of {event.total}, {event.recipe}{left}", markup=False, style="bold")
        elif isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, FrozenPathHint):
            self._say(frozen_path_text(event))
        elif isinstance(event, StepDone):
            self._step(event.iter)
        elif isinstance(event, RowLogged):
            self._log(event.row)
        elif isinstance(event, RunFinished):
            self.close()
            if self.candidate is not None and "search" not in event.summary:
                stderr.print(candidate_result_line(self.candidate.recipe.split(" (")[0], event.summary), markup=False)
            elif "search" in event.summary:
                self.candidate, _SaidOnce.said = None, None

    def _say(self, text: str) -> None:
        (self.bar.console if self.bar is not None else stderr).print(text, markup=False)

    def _start(self, event: RunStarted) -> None:
        self.total = event.iters
        self.first_iter = self.last_iter = event.start
        self.started = self.last_plain = time.perf_counter()
        self.recent.clear()
        self.terms = event.terms
        self.last_row, self.last_stats = None, ""  # a search's next candidate: not the previous one's figures
        resuming = f" (resuming at iteration {self.first_iter} of {self.total})" if self.first_iter else ""
        if self.candidate is None:
            stderr.print(f"adapting on {event.device}; run directory: {event.run_dir}{resuming}", markup=False)
        elif not self.explained or resuming:  # the candidates' folders are the search's: said once
            stderr.print(f"adapting on {event.device}: {event.run_dir}{resuming}", markup=False)
        terms = [t for t in event.terms if t not in self.explained]
        legend = [LEGEND[t] for t in terms]
        if not self.live and "lr" not in self.explained:  # the plain lines show the schedule too
            legend.append("lr: learning rate" + ("; lambda: the gradient reversal's weight" if "adv" in event.terms else ""))
            terms.append("lr")
        elif not self.live and "adv" in terms:
            legend.append("lambda: the gradient reversal's weight")
        if self.candidate is not None:
            self.explained.update(terms)
            for line in textwrap.wrap("progress terms: " + "; ".join(legend), SEARCH_COLUMNS) if legend else []:
                stderr.print(line, markup=False, style="dim")
        else:
            stderr.print("progress terms: " + "; ".join(legend), markup=False, style="dim")
        if self.live:
            self.bar = _TwoLineProgress(
                TextColumn("adapt"), BarColumn(bar_width=20), MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                console=stderr, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("adapt", total=self.total, completed=self.first_iter, speed="", eta="?", stats="")

    def _data(self, event: DataRead) -> None:
        for line in data_report_lines(event.report, event.held_out):
            stderr.print(line, markup=False)

    def _speed(self, it: int, now: float) -> float:
        """Iterations per second over the last RECENT_S seconds (since the start, before that)."""
        recent = self.recent
        if not recent or now - recent[-1][0] >= 0.25:  # a few samples a second are enough
            recent.append((now, it))
        while len(recent) > 2 and now - recent[1][0] >= self.RECENT_S:
            recent.popleft()
        then, done = recent[0] if len(recent) > 1 else (self.started, self.first_iter)
        return (it - done) / max(now - then, 1e-9)

    def _eta(self, it: int, speed: float) -> str:
        return duration((self.total - it) / speed) if speed > 0 else "?"

    def _step(self, it: int) -> None:
        self.last_iter = it
        now = time.perf_counter()
        if self.bar is not None:
            speed = self._speed(it, now)
            self.bar.update(self.task, completed=it, speed=f"{speed:.2f} it/s", eta=self._eta(it, speed))
        elif it == self.first_iter + 1 or now - self.last_plain >= self.PLAIN_INTERVAL_S:
            # piped: a heartbeat from the first iteration on, whatever --log-every says
            self._plain_line(it, now, self.last_row)

    def stats_text(self, row: dict[str, Any]) -> str:
        parts = [f"cls {fmt(row['loss_cls'])}"]
        if "adv" in self.terms:
            parts.append(f"adv {fmt(row['loss_adv'])} disc {fmt(row['disc_acc'], '.2f')}")
        if "relab" in self.terms:
            parts.append(f"relab s/t {fmt(row['relabeled_src'], '.2f')}/{fmt(row['relabeled_tgt'], '.2f')}")
        if "tgt-loss" in self.terms and row.get("loss_target") is not None:
            parts.append(f"tgt-loss {fmt(row['loss_target'])}")
        if "teach" in self.terms and row.get("loss_teacher") is not None:
            parts.append(f"teach {fmt(row['loss_teacher'])}")
        if "target_acc" in row:
            parts.append(f"tgt-acc {row['target_acc']:.3f}")
        return " ".join(parts)

    @staticmethod
    def eval_text(row: dict[str, Any]) -> str:
        parts = [f"{name} {fmt(row.get(key), '.4f')}" for key, name in NAMES.items() if key in row and key != "target_acc"]
        if row.get("predicted_shift") is not None:  # the reading the label-shift warning uses
            parts.append(f"| label shift {row['predicted_shift']:.3f} (predicted class shares, target vs. source; docs/label-shift.md)")
        if "target_acc" in row:
            parts.append(f"| target-acc {row['target_acc']:.4f} (oracle: --eval-dir labels)")
        return f"iter {row['iter']} validators: " + " ".join(parts)

    def show_step(self, text: str | None) -> bool:
        """A slow step inside training (an evaluation), shown on the bar's second line; False
        when there is no live bar to show it on."""
        if self.bar is None:
            return False
        self.bar.update(self.task, stats=text if text is not None else self.last_stats)
        return True

    def _log(self, row: dict[str, Any]) -> None:
        self.last_row = row
        shown = is_evaluation_row(row) and self.candidate is None  # a search's candidate says its validators once, at its end
        if self.bar is not None:
            self.last_stats = self.stats_text(row)
            self.bar.update(self.task, stats=self.last_stats)
            if shown:
                self.bar.console.print(self.eval_text(row), markup=False)
            return
        now = time.perf_counter()
        if shown:
            sys.stderr.write(self.eval_text(row) + "\n")
        if now - self.last_plain >= self.PLAIN_INTERVAL_S or row["iter"] == self.total or shown:
            self._plain_line(row["iter"], now, row)

    def _plain_line(self, it: int, now: float, row: dict[str, Any] | None) -> None:
        self.last_plain = now
        speed = self._speed(it, now)
        text = f"iter {it}/{self.total} {speed:.2f} it/s eta {self._eta(it, speed)}"
        if row is not None:
            text += f" lr {row['lr']:.2e}" + (f" lambda {row['lambda']:.3f}" if "adv" in self.terms else "") + f" {self.stats_text(row)}"
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def end(self) -> None:
        """The command is over, however it ended: its search's said-once lines go with it."""
        self.close()
        self.candidate, _SaidOnce.said = None, None


SEARCH_COLUMNS = 100  # a search's own lines fit a terminal this wide


def candidate_result_line(recipe: str, summary: dict[str, Any]) -> str:
    """A search's candidate in one line: its seconds and the validators of the snapshot it ships."""
    last = shipped_evaluation(summary)
    figures = " ".join(f"{name} {fmt(last.get(key), '.3f')}" for key, name in NAMES.items() if key in last and key != "target_acc")
    if last.get("target_acc") is not None:
        figures += f" | tgt-acc {last['target_acc']:.3f}"
    seconds = summary.get("seconds")
    took = f" in {duration(seconds)}" if isinstance(seconds, (int, float)) else ""
    return f"  {recipe}{took}: {figures}"[:SEARCH_COLUMNS]


def frozen_path_text(hint: FrozenPathHint) -> str:
    return (f"this run fine-tunes the whole backbone on a CPU: its {plural(hint.iters_left, 'iteration')} left will take about "
            f"{duration(hint.seconds_left)} at the first step's pace. --freeze-backbone would take about {duration(hint.frozen_seconds)} ("
            + (f"the features of {plural(hint.images, 'image')} once, about {duration(hint.features_seconds)}" if hint.images
               else "the features are all in the cache")
            + f", then {hint.iters} steps on them; measured on this run's first batch). To train that way, press Ctrl-C and start a new "
              "run with --freeze-backbone added (a resumed run "
            "keeps its own options; docs/performance.md).")


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

    def __call__(self, what: str, done: int, total: int | None, finished: bool, unit: str = "images") -> None:
        now = time.perf_counter()
        if what not in self.steps:
            self.steps[what] = [now, now, None]
        started, last, task = self.steps[what]
        shown_by_adapt = self.adapt is not None and self.adapt.show_step(None if finished else f"{what}: {done}/{total or '?'} {unit}")
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
            # Phases ("steps") end in a result that times each of them: one elapsed time per phase.
            if self.closing and not shown_by_adapt and seconds >= self.QUIET_BELOW_S and unit != "steps":
                rate = f" ({done / max(seconds, 1e-9):.0f}/s)" if unit == "images" else ""
                stderr.print(f"{what}: {plural(done, unit[:-1])} in {seconds:.1f}s{rate}", markup=False)
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
        elif unit == "steps":  # piped: each phase as it starts, the slow ones say nothing else
            if done < (total or 0):
                sys.stderr.write(f"{what}: step {done + 1} of {total}, {now - started:.0f}s so far\n")
                sys.stderr.flush()
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
