"""The signals that ask a run to stop: a first Ctrl-C or SIGTERM stops it after the step in
progress (its state saved), a second one at once, even inside one long C-level computation."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..errors import Interrupted


@contextmanager
def stop_requests(first: Callable[[str], None] | None = None, at_once: Callable[[], str] | None = None,
                  acknowledge: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """The first SIGINT or SIGTERM asks the loop to stop after the step in progress (the list gets
    the signal's name, and `first` is called with it); a second one stops at once (KeyboardInterrupt,
    or, when the main thread is inside a long computation that Python cannot interrupt, the exit
    `at_once` describes a second later: see SecondSignal, which calls `acknowledge` with the first
    signal's name as soon as it arrives).

    A handler the caller had installed (a script that runs several runs, such as a sweep) hears of
    the first signal too, so that it is not lost when it arrives during a run: Python's own
    handlers are not called (the run already stops, or finishes, as asked)."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set in the main thread
        return
    second = SecondSignal(at_once, acknowledge) if at_once is not None else None

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append("interrupted" if signum == signal.SIGINT else "terminated")
        if first is not None:
            first(requested[0])
        caller = previous.get(signum)
        if callable(caller) and caller is not signal.default_int_handler:
            caller(signum, frame)

    previous: dict[int, Any] = {}
    previous.update({s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)})
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if second is not None:
            second.close()


class SecondSignal:
    """Python runs a signal handler only between bytecodes: inside one long computation (a conv's
    backward on a CPU takes seconds) a first Ctrl-C is not even seen, and a second would wait for it
    to end. The C-level handler writes every signal to a wakeup pipe at once, though; a thread reads
    it (PyTorch's computations release the GIL), says at once that the first was heard
    (`acknowledge`), and if the main thread has not stopped GRACE_S after a second SIGINT or SIGTERM,
    the process exits 130 with the one line `line()` gives. Every run file is written atomically,
    so the newest checkpoint is intact."""

    GRACE_S = 1.0

    def __init__(self, line: Callable[[], str], acknowledge: Callable[[str], None] | None = None):
        self.line, self.acknowledge = line, acknowledge
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)
        self.previous = signal.set_wakeup_fd(self.write_end, warn_on_full_buffer=False)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="golabels-second-signal", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        seen = 0
        while not self.closed.is_set():
            try:
                data = os.read(self.read_end, 64)
            except OSError:
                return
            if not data:
                return
            stops = [byte for byte in data if byte in (signal.SIGINT, signal.SIGTERM)]
            if stops and not seen and self.acknowledge is not None:
                self.acknowledge("interrupted" if stops[0] == signal.SIGINT else "terminated")
            seen += len(stops)
            if seen >= 2:
                if self.closed.wait(self.GRACE_S):
                    return  # the main thread stopped on its own
                sys.stderr.write(self.line() + "\n")
                sys.stderr.flush()
                os._exit(130)

    def close(self) -> None:
        self.closed.set()
        signal.set_wakeup_fd(self.previous)
        os.close(self.write_end)  # the watching thread reads the end of the pipe and returns
        self.thread.join(timeout=1.0)
        os.close(self.read_end)


@contextmanager
def stop_at_once(what: str, hint: str) -> Iterator[None]:
    """SIGINT or SIGTERM stops at once (Interrupted: `what` says what was kept, `hint` how to go on):
    for the work before a run's first step (reading the folders, decoding images, computing
    features), which writes nothing a stop could leave half-done. A handler the caller had
    installed hears of it too, as with stop_requests, so that a sweep stops after this run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        caller = previous.get(signum)
        if callable(caller) and caller is not signal.default_int_handler:
            caller(signum, frame)
        raise Interrupted(f"{'interrupted' if signum == signal.SIGINT else 'terminated'} before training began; {what}", hint)

    previous: dict[int, Any] = {}
    previous.update({s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)})
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
