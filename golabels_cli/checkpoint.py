"""Run directories, atomic writes and safe loading of models and checkpoints.

Nothing here overwrites a user's run: new run directories are claimed with mkdir (which fails
if the name exists), and every file is written to a temporary name in its own directory and
renamed into place, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import InputError, reason
from .formats import json_text
from .images import require_regular
from .model_info import ModelInfo
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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---- the shipped classifier -------------------------------------------------------------------


def save_model(model: torch.nn.Module, info: ModelInfo, path: str | Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(_sorted_header(save(state, metadata=info.metadata())))


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the header's keys in one order: its writer emits the metadata in
    hash-map order, which changes from process to process, so two identical runs' files would
    differ and a checksum could not show that a replay matched. The tensors' bytes and offsets
    are untouched; the header is padded with spaces to 8 bytes, as the format's writer does."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = header.pop("__metadata__", None)
    ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}),
               **dict(sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0])))}
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def model_path(run_or_model: str | Path) -> Path:
    """The model file of a run directory or a model file: model.safetensors, or the checkpoint.pt
    of a run that stopped before its end (load_model takes its weights)."""
    path = Path(run_or_model)
    if path.is_dir():
        path = path / run_files.MODEL
        if not os.path.lexists(path) and os.path.lexists(path.parent / run_files.CHECKPOINT):
            return path.parent / run_files.CHECKPOINT
        if not os.path.lexists(path):
            raise InputError(f"{run_or_model} holds no {run_files.MODEL}", "pass a finished run directory or a model file")
    elif not os.path.lexists(path):
        raise InputError(f"{run_or_model} does not exist", "pass a run directory or a model.safetensors file")
    require_regular(path, "model", "pass a run directory or a model.safetensors file")  # a FIFO would block for ever
    if path.suffix.lower() == ".onnx":
        raise InputError(f"{path} is an ONNX model, which golabels predict runs; this command reads the PyTorch model",
                         f"pass its run directory or its {run_files.MODEL}")
    return path


def load_model(run_or_model: str | Path):
    """(Classifier, or HeadEnsemble, in eval mode, ModelInfo) from a run directory or a model.safetensors file."""
    from safetensors import safe_open

    from .methods import get_recipe
    from .models import Classifier, HeadEnsemble, create_backbone

    path = model_path(run_or_model)
    if path.name == run_files.CHECKPOINT:
        return checkpoint_model(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise InputError(f"cannot read model {path} ({reason(exc)})", "the file is damaged; re-run or re-export") from exc
    info = ModelInfo.from_metadata(meta, path)

    def head(method: str, prefix: str = "") -> Classifier:
        try:
            bridged = get_recipe(method).alignment.bridged_head
        except ValueError:  # a method of a newer golabels: its head is told by the weights
            bridged = f"{prefix}head.bridge.weight" in state
        return Classifier(backbone, len(info.classes), info.bottleneck_dim, bridged=bridged)

    backbone = create_backbone(info.backbone, pretrained=False)
    if info.members is None:
        model = head(info.method)
    else:
        model = HeadEnsemble(backbone, [head(m, f"members.{i}.") for i, m in enumerate(info.members)])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"model {path} does not match its own metadata ({reason(exc)})", "the file is damaged") from exc
    return model.eval(), info


def checkpoint_model(path: Path):
    """(Classifier in eval mode, ModelInfo) of the weights in a stopped run's checkpoint.pt, as they
    were at its last save (with training's BatchNorm statistics: --bn-stats target re-estimates
    them only when the run finishes). Says which iteration it is."""
    from .methods import get_recipe
    from .models import Classifier, create_backbone, resolve_data_config

    ckpt = load_checkpoint(path)
    try:
        cfg, classes, done = ckpt["config"], list(ckpt["classes"]), int(ckpt["loop"]["iteration"])
        backbone = create_backbone(cfg["backbone"], pretrained=False)
        info = ModelInfo(cfg["backbone"], classes, resolve_data_config(backbone, cfg.get("image_size")), cfg["bottleneck_dim"],
                         cfg["method"], cfg["domain_labels"]).check(path)
        model = Classifier(backbone, len(classes), info.bottleneck_dim, bridged=get_recipe(info.method).alignment.bridged_head)
        model.load_state_dict(ckpt["model"], strict=True)
    except InputError:
        raise
    except Exception as exc:  # a key missing, a shape that does not fit: unusable alike
        raise InputError(f"{path} is not a checkpoint golabels can take a model from ({reason(exc)})", "pass a finished run") from exc
    bn = " (with training's BatchNorm statistics: --bn-stats target re-estimates them at the end)" if cfg.get("bn_stats") == "target" else ""
    log.warning("%s holds no %s: the run stopped at iteration %d of %d; using the weights of iteration %d from %s%s",
                path.parent, run_files.MODEL, done, cfg["iters"], done, run_files.CHECKPOINT, bn)
    return model.eval(), info


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded without unpickling arbitrary objects."""
    require_regular(path, "checkpoint", "pass the run directory of a golabels adapt run")
    try:
        with warnings.catch_warnings():  # torch's advice on unpickling is not for golabels' users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"checkpoint {path} holds pickled Python objects, which golabels never unpickles: it could run any code",
                         "it is not a golabels checkpoint; start the run again") from exc
    except Exception as exc:
        raise InputError(f"cannot load checkpoint {path} ({reason(exc)})", "it is damaged or not a golabels checkpoint") from exc
