"""Progress of the slow steps, for whoever listens: the command line's bars, or nobody.

Library code wraps a slow loop in `tracked(items, what, total)`; a command installs a listener
for its duration with `listening(listener)`. Without a listener nothing happens, so the library
stays silent and the tests stay quiet. Kept apart from console.py: the library never imports the
user interface, and predict.py (torch-free) can import this module.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar, Union

T = TypeVar("T")

# (what, done, total, finished, unit): what is being done ("features: source"), how many items
# are done, of how many (None: not known in advance, as for predict's stdin), and what they are
# ("images", or "steps" of a slow step made of phases). A call with finished=True closes the step.
Listener = Callable[[str, int, "int | None", bool, str], None]

_listener: ContextVar[Listener | None] = ContextVar("golabels_progress", default=None)


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def tracked(items: Iterable[T], what: str, total: int | None, size: Callable[[T], int] = lambda item: 1) -> Iterator[T]:
    """The items of `items`, reporting after each how many (by `size`) are done."""
    listener = _listener.get()
    if listener is None:
        yield from items
        return
    done = 0
    listener(what, 0, total, False, "images")
    try:
        for item in items:
            yield item
            done += size(item)
            listener(what, done, total, False, "images")
    finally:
        listener(what, done, total, True, "images")


@contextmanager
def phases(what: str, total: int) -> Iterator[Callable[[], None]]:
    """A slow step made of `total` phases that report no progress of their own (an ONNX export):
    the block calls the function it gets after each phase."""
    listener = _listener.get()
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if listener is not None:
            listener(what, done, total, False, "steps")

    if listener is not None:
        listener(what, 0, total, False, "steps")
    try:
        yield advance
    finally:
        if listener is not None:
            listener(what, done, total, True, "steps")


# ---- the events of a training run (training.adapt and resume report them to their `progress`) ----


@dataclass(frozen=True)
class DataRead:
    """The folders are read: their report (data.data_report), before any slow step."""

    report: dict[str, Any]
    held_out: int  # source images held out for the validators


@dataclass(frozen=True)
class RunStarted:
    run_dir: str | None  # None on ranks other than 0, which write nothing
    iters: int
    start: int  # the iteration the loop starts at: > 0 when resumed
    device: str
    classes: list[str]
    world: int  # processes
    # the progress line's terms that can change in this run: "cls", then "adv" and "disc" with a
    # discriminator, "relab" with domain labels other than fixed, "tgt-loss" with losses on the target's predictions
    terms: tuple[str, ...] = ("cls", "adv", "disc", "relab")


@dataclass(frozen=True)
class FrozenPathHint:
    """Fine-tuning on a CPU, measured after the first step against --freeze-backbone (training/path_hint.py)."""

    seconds_left: float  # this run's remaining iterations at the first step's pace
    iters_left: int
    frozen_seconds: float  # --freeze-backbone: the features once, then every iteration on them
    features_seconds: float
    images: int  # whose features the frozen path computes (those not in the cache)
    iters: int


@dataclass(frozen=True)
class StepDone:
    iter: int


@dataclass(frozen=True)
class RowLogged:
    row: dict[str, Any]  # the metrics.jsonl row, as written


@dataclass(frozen=True)
class CandidateStarted:
    """--method auto: a candidate recipe's run starts (or resumes); its own events follow."""

    index: int  # from 0
    total: int
    recipe: str
    run_dir: str
    seconds_left: float | None  # the whole search's, at the pace of the candidates done so far; None before the first


@dataclass(frozen=True)
class RunFinished:
    summary: dict[str, Any]  # summary.json's document, as written


RunEvent = Union[DataRead, RunStarted, FrozenPathHint, StepDone, RowLogged, RunFinished, CandidateStarted]
RunListener = Callable[[RunEvent], None]


def no_events(event: RunEvent) -> None:
    pass


def batch_size(batch) -> int:
    """The rows of a loader's (inputs, labels) batch."""
    return len(batch[0])
