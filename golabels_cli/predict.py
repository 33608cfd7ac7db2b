"""Labels for images, from a run directory, a model.safetensors or an exported model.onnx.

This module does not import torch: with an .onnx model, prediction runs on onnxruntime and numpy
alone (a test proves it), so a deployment needs neither PyTorch nor the run directory. The
PyTorch path imports torch only when it is asked for. Both decode and preprocess images with
`images.load_array`, the code `eval` and export verification use.

Images are decoded on a thread pool one batch ahead of the model; an image that cannot be read
is reported through `on_skip` and the others go on.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from .errors import InputError, reason
from .formats import csv_line, json_text
from .images import image_files, is_image_name, load_array
from .model_info import ModelInfo

log = logging.getLogger("golabels")

STDIN = "-"
MODEL_KINDS = "a run directory, a model.safetensors or a .onnx file"


def warn_skipped(path: str, why: str) -> None:
    """An input that cannot be read: the other images go on (the command and the API alike)."""
    log.warning("cannot read %s (%s): no prediction for it", path, why)


@dataclass
class Predictor:
    info: ModelInfo
    run: Callable[[np.ndarray], np.ndarray]  # float32 [N, 3, H, W] -> probabilities [N, C]
    backend: str  # what runs it, for the user: "onnxruntime (CPUExecutionProvider)", "PyTorch (cpu)"

    @property
    def classes(self) -> list[str]:
        return self.info.classes


def open_predictor(model: str | Path, device: str = "auto") -> Predictor:
    path = Path(model)
    if not path.exists():
        raise InputError(f"model {model} does not exist", f"pass {MODEL_KINDS}")
    if path.suffix.lower() == ".onnx" and path.is_file():
        return _onnx_predictor(path, device)
    if path.is_dir() or path.suffix.lower() == ".safetensors":
        return _torch_predictor(path, device)
    raise InputError(f"{model} is not a model file golabels reads", f"pass {MODEL_KINDS}")


def _onnx_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device in ("auto", "cpu"):
        return ["CPUExecutionProvider"]
    raise InputError(f"--device {device} is not available to onnxruntime here (it has {', '.join(available)})", "pass --device cpu")


def _onnx_predictor(path: Path, device: str) -> Predictor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; golabels reports what matters
    try:
        session = ort.InferenceSession(str(path), options, providers=_onnx_providers(device))
    except InputError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for damaged or non-ONNX files
        raise InputError(f"cannot load ONNX model {path} ({reason(exc)})", "the file is damaged or not ONNX; export it again") from exc
    info = ModelInfo.from_onnx_metadata(session.get_modelmeta().custom_metadata_map, path)
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) != 1 or "probabilities" not in outputs:
        raise InputError(f"{path} does not have golabels' inputs and outputs", "export it again with golabels export")
    input_name, fixed = inputs[0].name, inputs[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None
    graph_size, claimed = list(inputs[0].shape[1:]), info.data_config["input_size"]
    if len(graph_size) != 3 or any(isinstance(g, int) and g != c for g, c in zip(graph_size, claimed)):
        # checked before any image is decoded at the claimed size: an edited 8192 px claim would cost gigabytes
        raise InputError(f"{path} says its input is {'x'.join(map(str, claimed))} in its metadata and its graph takes "
                         f"{'x'.join(map(str, graph_size))}", "the file was edited or damaged; export it again")

    def wrong_width(outputs) -> InputError:
        return InputError(f"{path} lists {len(info.classes)} classes in its metadata and its graph gives {outputs} outputs",
                          "the file was edited or damaged; export it again")

    width = next(o for o in session.get_outputs() if o.name == "probabilities").shape[-1]
    if isinstance(width, int) and width != len(info.classes):
        raise wrong_width(width)

    def run(x: np.ndarray) -> np.ndarray:
        probabilities = _run(x)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(info.classes):  # a graph with a symbolic class dimension
            raise wrong_width(probabilities.shape[-1])
        return probabilities

    def _run(x: np.ndarray) -> np.ndarray:
        if fixed is None:
            return session.run(["probabilities"], {input_name: x})[0]
        # A fixed-batch graph: pad the last chunk with zeros and drop the padding's rows.
        out = []
        for start in range(0, len(x), fixed):
            chunk = x[start:start + fixed]
            padded = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)]) if len(chunk) < fixed else chunk
            out.append(session.run(["probabilities"], {input_name: padded})[0][: len(chunk)])
        return np.concatenate(out)

    return Predictor(info, run, f"onnxruntime ({session.get_providers()[0]})")


def _torch_predictor(path: Path, device: str) -> Predictor:
    import torch

    from .checkpoint import load_model
    from .device import pick_device

    model, info = load_model(path)
    dev = pick_device(device)
    model = model.to(dev)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        logits, _ = model(torch.from_numpy(x).to(dev))
        return logits.float().softmax(dim=1).cpu().numpy()

    return Predictor(info, run, f"PyTorch ({dev})")


# ---- inputs ----------------------------------------------------------------------------------


def iter_inputs(inputs: Iterable[str], stdin: BinaryIO, on_skip: Callable[[str, str], None] = lambda path, why: None,
                null: bool = False) -> Iterator[str]:
    """Image paths from the command line's INPUTS: files as given, folders expanded recursively
    (sorted), and `-` read from stdin as one path per line, or per NUL with `null` (`find -print0`:
    any name, newlines included). A missing path is yielded as is: reading it reports the problem
    and the others go on. What a folder holds that is not a regular file goes to on_skip."""
    for item in inputs:
        if item == STDIN:
            empty = 0
            for raw in (_split_nul(stdin) if null else _lines(stdin)):
                # Paths are bytes on POSIX; fsdecode keeps non-UTF-8 names intact (surrogateescape).
                line = os.fsdecode(raw if null else raw.rstrip(b"\r\n"))
                if line.strip():
                    empty = 0
                    yield from _expand(line, on_skip)
                    continue
                empty += 1
                if empty > MAX_EMPTY_ENTRIES:
                    raise InputError(f"stdin gave {MAX_EMPTY_ENTRIES:,} empty {'entries' if null else 'lines'} in a row and no path "
                                     "(is it /dev/zero?)", "pipe in file paths, one per line (or NUL-separated with -0)")
        else:
            yield from _expand(item, on_skip)


# No path is longer than this (Linux's PATH_MAX): a longer line is not one, and reading it whole
# would let an endless stream without a newline (/dev/zero) take all memory.
MAX_PATH_BYTES = 4096
MAX_EMPTY_ENTRIES = 1 << 16


def _too_long() -> InputError:
    return InputError(f"a line of stdin is longer than any path ({MAX_PATH_BYTES} bytes)",
                      "pipe in file paths, one per line (or NUL-separated with -0)")


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    while line := stream.readline(MAX_PATH_BYTES + 2):  # a path, then \r\n at most
        if len(line.rstrip(b"\r\n")) > MAX_PATH_BYTES:
            raise _too_long()
        yield line


def _split_nul(stream: BinaryIO) -> Iterator[bytes]:
    pending = b""
    while chunk := stream.read(1 << 16):
        *done, pending = (pending + chunk).split(b"\0")
        for entry in done:
            if len(entry) > MAX_PATH_BYTES:
                raise _too_long()
            yield entry
        if len(pending) > MAX_PATH_BYTES:
            raise _too_long()
    if pending:
        yield pending


def _expand(path: str, on_skip: Callable[[str, str], None]) -> Iterator[str]:
    if os.path.isdir(path):
        problems: list[tuple[Path, str]] = []
        yield from (str(p) for p in image_files(path, problems))
        for problem, why in problems:
            if is_image_name(problem.name):  # an image name that is a FIFO, a device...: an input not read
                on_skip(str(problem), why)
            else:
                log.warning("skipping folder %s (%s)", problem, why)
    else:
        yield path


# ---- prediction ------------------------------------------------------------------------------


@dataclass
class Prediction:
    path: str
    probabilities: np.ndarray  # [C], float32


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _load(path: str, data_config: dict) -> np.ndarray | Exception:
    try:
        return load_array(path, data_config)
    except Exception as exc:  # one bad file among thousands must not stop the others: PIL raises many kinds
        return exc


def predict_batches(
    predictor: Predictor,
    paths: Iterable[str],
    batch_size: int = 32,
    workers: int = 0,
    on_skip: Callable[[str, str], None] = lambda path, why: None,
) -> Iterator[list[Prediction]]:
    """Predictions in input order, one list per batch; unreadable paths go to on_skip instead."""
    cfg = predictor.info.data_config
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    pending: deque[tuple[list[str], list]] = deque()

    def finish(chunk: list[str], loads: list) -> list[Prediction]:
        arrays, kept = [], []
        for path, loaded in zip(chunk, loads):
            loaded = loaded.result() if isinstance(loaded, Future) else loaded
            if isinstance(loaded, Exception):
                on_skip(path, _why(path, loaded))
            else:
                arrays.append(loaded)
                kept.append(path)
        if not arrays:
            return []
        probabilities = predictor.run(np.stack(arrays))
        return [Prediction(path, p) for path, p in zip(kept, probabilities)]

    try:
        for chunk in _chunks(paths, batch_size):
            loads = [pool.submit(_load, p, cfg) for p in chunk] if pool else [_load(p, cfg) for p in chunk]
            pending.append((chunk, loads))
            if len(pending) > 1:  # the pool decodes this batch while the model runs the previous one
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        if pool is not None:
            # Not waiting: after Ctrl-C the decodes in flight are not worth a second one.
            pool.shutdown(wait=False, cancel_futures=True)


def _why(path: str, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return reason(exc)


# ---- output rows -----------------------------------------------------------------------------


def top_k(probabilities: np.ndarray, k: int) -> list[int]:
    # Stable sort on the negated values: ties keep class order, like argmax.
    return np.argsort(-probabilities, kind="stable")[:k].tolist()


def csv_header(k: int) -> str:
    """label and confidence are the most probable class: --top-k adds the next ones, ranks 2 to k."""
    columns = ["path", "label", "confidence"]
    for i in range(2, k + 1):
        columns += [f"top{i}_label", f"top{i}_probability"]
    return csv_line(columns)


def csv_row(prediction: Prediction, classes: list[str], k: int) -> str:
    ranked = top_k(prediction.probabilities, max(k, 1))
    cells = [prediction.path]
    for c in ranked:
        cells += [classes[c], f"{prediction.probabilities[c]:.6f}"]
    return csv_line(cells)


def jsonl_row(prediction: Prediction, classes: list[str], k: int) -> str:
    best = int(np.argmax(prediction.probabilities))
    row: dict[str, Any] = {"path": prediction.path, "label": classes[best], "confidence": round(float(prediction.probabilities[best]), 6)}
    if k:
        row["top_k"] = [{"label": classes[c],
                         "probability": round(float(prediction.probabilities[c]), 6)} for c in top_k(prediction.probabilities, k)]
    return json_text(row, indent=None, ensure_ascii=False) + "\n"
