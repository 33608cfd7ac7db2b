"""Files that are never half-written and run directories that are never overwritten.

New run directories are claimed with mkdir (which fails if the name exists), and every file is
written to a temporary name in its own directory and renamed into place, so a crash leaves either
the old file or the new one, never half of one. Torch-free (a checkpoint's torch.save imports it).
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError, reason
from .formats import json_text
from . import run_files

log = logging.getLogger("golabels")


def _unwritable(path: Path, exc: OSError) -> InputError:
    return InputError(f"cannot create the run directory {path} ({reason(exc)})", "pass --out in a folder you can write to")


def next_run_dir(parent: str | Path = "runs/adapt", name: str = "exp") -> Path:
    """Claim parent/exp, else exp2, exp3, ...: mkdir is atomic, so two runs never share one."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 100_000):
            candidate = parent / (name if n == 1 else f"{name}{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        raise _unwritable(parent, exc) from exc
    raise InputError(f"no free run directory name under {parent}", "pass --out DIR")


def _taken(out: Path) -> InputError:
    return InputError(f"run directory {out} already exists", "pass another --out, or --exist-ok to write into it")


def _refuse_taken(out: Path, exist_ok: bool) -> None:
    """An --out that is a file, or a folder with something in it (unless exist_ok)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file", "pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not exist_ok:
        raise _taken(out)


def check_run_dir(out: str | Path | None, exist_ok: bool, inputs: dict[str, str | None] | None = None) -> None:
    """The checks claim_run_dir will make, made early and creating nothing: a run that cannot
    write its directory fails before its data report and its slow first steps. A run directory
    inside one of `inputs` ({what: folder}) is refused: the next scan of that folder would read
    the run's own figures as images."""
    path = Path(out) if out is not None else Path("runs/adapt")
    for what, folder in (inputs or {}).items():
        if folder and is_inside(path, folder):
            flag = f"--out {path}" if out is not None else f"the default run directory {path.absolute()}"
            raise InputError(f"{flag} is inside {what} {folder}: its figures would be read as images",
                             "pass an --out outside the image folders")
    if out is not None:
        _refuse_taken(path, exist_ok)
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "a file" if not existing.is_dir() else "a folder you cannot write to"
        raise InputError(f"cannot create the run directory {path} ({existing} is {what})", "pass --out in a folder you can write to")


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` (which need not exist yet) is `folder` or below it, links resolved."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def claim_run_dir(out: str | Path | None, exist_ok: bool, first_file: str = run_files.CONFIG) -> Path:
    """Claim `out` for one process: a new folder, or an empty one, unless `exist_ok`.

    The claim is `first_file` created empty with O_EXCL inside the folder (the caller then writes
    it atomically): of two processes claiming the same empty folder at the same instant, exactly
    one creates it, where checking for emptiness and then writing would let both through.
    """
    if out is None:
        return next_run_dir()
    out = Path(out)
    _refuse_taken(out, exist_ok)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "Permission denied")
        if not exist_ok:
            os.close(os.open(out / first_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError as exc:
        raise _taken(out) from exc
    except OSError as exc:
        raise _unwritable(out, exc) from exc
    return out


@contextmanager
def one_writer(run_dir: Path) -> Iterator[None]:
    """While this process writes `run_dir` (a run, a resume, a search), no other may: an exclusive
    lock on the folder itself (flock on its descriptor: no file is made, nothing is left behind),
    taken without waiting and released when the process ends, however it ends. Two `adapt
    --exist-ok` into one folder, or a resume of a run still training, would otherwise both write it
    and leave one's config and metrics beside the other's model. (A file system without locks,
    such as some NFS mounts, is not protected.)"""
    import fcntl

    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InputError(f"cannot open the run directory {run_dir} ({reason(exc)})", "pass a run directory you can write to") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another golabels process is writing {run_dir}", "wait for it to end, or pass another --out") from None
        except OSError:
            pass  # no locks on this file system: as before them
        yield
    finally:
        os.close(fd)  # the lock goes with it


def _file_mode() -> int:
    """The mode open() would give a new file: mkstemp's 0600 would hide a model.onnx from the
    service user that loads it. (Reading the umask means setting it for an instant.)"""
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def _writer_alive(tmp: Path) -> bool:
    """Temporaries are named .NAME.PID.XXXX.tmp: alive if that process still runs on this machine."""
    try:
        pid = int(tmp.name[:-len(".tmp")].rsplit(".", 2)[-2])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in `folder`, found by creating one (os.access is no help on a
    read-only mount, nor for root); None when it can."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".probe.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return (exc.strerror or reason(exc)).lower()  # not the probe's name: the folder is the point
    os.close(fd)
    os.unlink(probe)
    return None


def remove_stale_temporaries(folder: Path, name: str = "*") -> None:
    """Temporary files that a killed process left beside the files it was writing (`name`: of one
    file only); those of a process still writing are left alone."""
    for path in Path(folder).glob(f".{name if name == '*' else glob.escape(name)}.*.tmp"):
        if not _writer_alive(path):
            path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    replace=False never overwrites: the finished file is linked to `path`, which fails if the name
    exists, even if another process created it a moment ago (FileExistsError).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, replace: bool = True) -> None:
    with atomic_path(path, replace) as tmp:  # a name that is not UTF-8 written back as the bytes it was
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json_text(data) + "\n")


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
