"""The kinds of failure the CLI maps to exit codes (2: bad input, 1: the run failed, 130: interrupted, state saved)."""


class GolabelsError(Exception):
    """A failure the user can act on; `hint` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class InputError(GolabelsError):
    """Bad usage or input: a missing folder, an unknown backbone, a corrupt weights file."""

    exit_code = 2


class RunError(GolabelsError):
    """The run itself failed: diverged, out of memory."""

    exit_code = 1


class Interrupted(GolabelsError):
    """Stopped by Ctrl-C or SIGTERM after the state was saved."""

    exit_code = 130


def reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error:
    a longer one is cut after its last whole sentence that fits, else after a whole word, marked
    with an ellipsis; never mid-word."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) <= limit:
        return text
    head = text[:limit]
    sentence = head.rfind(". ")
    if sentence >= limit // 3:
        return head[:sentence + 1]
    word = head.rfind(" ")
    return (head[:word] if word > 0 else head[:limit - 1]).rstrip(",;:") + "…"


def plural(n: int, word: str) -> str:
    """`1 image`, `2 images`: for the counts in messages."""
    return f"{n} {word}{'' if n == 1 else 's'}"


class AlreadyReported(GolabelsError):
    """A worker process failed and printed its own one-line error: leave with its exit code, silently."""

    def __init__(self, exit_code: int):
        super().__init__(f"exit {exit_code}")
        self.exit_code = exit_code
