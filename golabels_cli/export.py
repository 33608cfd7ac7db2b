"""ONNX export of an adapted classifier, proven equal to PyTorch before it is put in place.

    input          float32 [N, 3, H, W]: resized, center-cropped, normalized (see images.to_array)
    logits         float32 [N, C]
    probabilities  float32 [N, C]: softmax of the logits

N is dynamic unless a fixed batch is asked for. The file's `metadata_props` carry the class names
and the preprocessing (model_info.py), so it is usable without the run directory. The graph is
written to a temporary file beside the output, checked with `onnx.checker`, run on onnxruntime
against PyTorch, and renamed into place only if the probabilities agree within VERIFY_TOLERANCE.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model, model_path
from .files import atomic_path, remove_stale_temporaries, unwritable
from .errors import InputError, RunError, reason
from .images import image_files, load_array
from .model_info import ModelInfo
from .progress import phases, tracked
from . import run_files

log = logging.getLogger("golabels")

DEFAULT_OPSET = 18
VERIFY_TOLERANCE = 1e-4
VERIFY_IMAGES = 8
INPUT_NAME, OUTPUT_NAMES = "input", ("logits", "probabilities")


@dataclass
class ExportResult:
    path: str
    opset: int
    batch: int | None  # None: dynamic
    classes: int
    max_abs_diff: float | None  # of probabilities, onnxruntime vs. PyTorch; None when not verified
    verified_on: str | None
    bytes: int
    seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)  # loading, tracing, checking, verifying: of `seconds`

    def to_dict(self) -> dict:
        return asdict(self)


class InferenceGraph(nn.Module):
    """The exported computation: the classifier's logits and their softmax."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = self.classifier(images)
        return logits, logits.softmax(dim=1)


def default_output(run_or_model: str | Path) -> Path:
    path = Path(run_or_model)
    return path / run_files.ONNX_MODEL if path.is_dir() else path.with_suffix(".onnx")


def _run_source_folder(model_file: Path) -> Path | None:
    """The source folder recorded in the run's config.yaml, when the model sits in its run directory."""
    from .yaml_files import run_config

    source = run_config(model_file.parent).get("source")
    return Path(source) if isinstance(source, str) and Path(source).is_dir() else None


def verification_batch(model_file: Path, info: ModelInfo, n: int) -> tuple[np.ndarray, str]:
    """n inputs for comparing onnxruntime with PyTorch: real source images, one class after another,
    when the run's source folder still exists; else seeded random inputs."""
    source = _run_source_folder(model_file)
    arrays: list[np.ndarray] = []
    if source is not None:
        per_class = [image_files(d) for d in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))]
        candidates = [files[i] for i in range(max(map(len, per_class), default=0)) for files in per_class if i < len(files)]
        for path in tracked(candidates, "verification: reading source images", min(n, len(candidates))):
            if len(arrays) == n:
                break
            try:
                arrays.append(load_array(path, info.data_config))
            except (OSError, ValueError, SyntaxError) as exc:
                log.debug("verification skips %s (%s)", path, reason(exc))
    if arrays:
        described = f"{len(arrays)} images from the source folder {source}"
        while len(arrays) < n:  # a fixed batch larger than the folder: repeat images
            arrays.append(arrays[len(arrays) % len(arrays)])
        return np.stack(arrays[:n]), described
    shape = (n, *info.data_config["input_size"])
    inputs = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return inputs, f"{n} random inputs (the run's source folder is not available)"


@contextlib.contextmanager
def _exporter_quiet():
    """The exporter reports its steps on stdout, which belongs to the command's results, and logs
    warnings (with tracebacks) that say nothing actionable, and its graph passes log each step at
    INFO ("Removed 146 unused nodes"), which a Python caller's logging.basicConfig(level=INFO)
    would show; golabels reports what matters itself. With the golabels logger at DEBUG they all show."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnx")]
    levels = [logger.level for logger in loggers]
    captured = io.StringIO()
    try:
        if not log.isEnabledFor(logging.DEBUG):
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        log.debug("exporter output:\n%s", captured.getvalue())


def _export_proto(graph: nn.Module, example: torch.Tensor, opset: int, dynamic: bool):
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    try:
        with _exporter_quiet():
            program = torch.onnx.export(
                graph, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
            )
    except Exception as exc:
        raise RunError(f"ONNX export failed ({reason(exc)})", "try another --opset, or rerun with --debug and report it") from exc
    proto = program.model_proto
    # Below its native opset the exporter converts the graph, and keeps the native one if it can't.
    actual = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if actual != opset:
        raise RunError(f"this model cannot be expressed in ONNX opset {opset}; the exporter needs {actual}", f"pass --opset {actual} or "
                                                                                                             "higher")
    return proto


def _compare(session, graph: nn.Module, batches: list[np.ndarray]) -> float:
    worst = 0.0
    with torch.no_grad():
        for x in batches:
            expected = graph(torch.from_numpy(x))[1].numpy()
            _, probabilities = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
            worst = max(worst, float(np.abs(probabilities - expected).max()))
    return worst


def export_onnx(
    run_or_model: str | Path,
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    verify: bool = True,
    exist_ok: bool = False,
) -> ExportResult:
    import onnx

    started = time.perf_counter()
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be positive, not {batch}", "or pass --dynamic-batch")
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(f"--opset {opset} is out of range", f"this onnx supports 11 to {onnx.defs.onnx_opset_version()}; the default is "
                                                             f"{DEFAULT_OPSET}")
    output = Path(output) if output is not None else default_output(run_or_model)
    if output.suffix != ".onnx":
        raise InputError(f"--output {output} does not end in .onnx", "name the file *.onnx")
    if output.is_dir():
        raise InputError(f"--output {output} is a folder", "pass a file name ending in .onnx")
    if output.exists() and not exist_ok:
        raise InputError(f"{output} already exists", "pass another --output, or --exist-ok to replace it")
    model, info = load_model(run_or_model)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {output.parent} ({reason(exc)})", "pass an --output in a writable folder") from exc
    why = unwritable(output.parent)  # before the tracing and verifying, not after them
    if why is not None:
        raise InputError(f"cannot write {output} ({why})", "pass an --output in a folder you can write to")
    if output.exists():
        log.warning("--exist-ok: replacing %s (%.1f MB, written %s)", output, output.stat().st_size / 1e6,
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(output.stat().st_mtime)))

    log.info("exporting %s to ONNX (opset %d, %s)", model_path(run_or_model), opset, f"batch {batch}" if batch else "dynamic batch")
    graph = InferenceGraph(model).eval()
    x, described = verification_batch(model_path(run_or_model), info, batch or VERIFY_IMAGES)
    laps = {"loading": time.perf_counter() - started}  # one elapsed time per phase, shown once, in the result
    # tracing, checking and verifying take seconds to a minute with nothing of their own to count
    with phases("export: tracing, checking, verifying", 3 if verify else 2) as advance:

        def done(phase: str) -> None:
            laps[phase] = time.perf_counter() - started - sum(laps.values())
            advance()

        proto = _export_proto(graph, torch.from_numpy(x), opset, dynamic=batch is None)
        onnx.helper.set_model_props(proto, info.onnx_metadata())
        proto.doc_string = f"{info.backbone} adapted by golabels {info.version} ({info.method}, {info.domain_labels} domain labels)"
        done("tracing")
        max_diff = _write_checked(proto, output, exist_ok, verify, graph, x, batch, described, done)
    return ExportResult(
        path=str(output), opset=opset, batch=batch, classes=len(info.classes), max_abs_diff=max_diff,
        verified_on=described if verify else None, bytes=output.stat().st_size, seconds=time.perf_counter() - started,
        phase_seconds={k: round(v, 2) for k, v in laps.items()},
    )


def _write_checked(proto, output: Path, exist_ok: bool, verify: bool, graph, x, batch: int | None, described: str, done) -> float | None:
    """The graph to `output` (atomically), checked, and verified against PyTorch when `verify`:
    its max |probability difference| (None unverified). Nothing is left at `output` on failure."""
    import onnx
    import onnxruntime as ort

    max_diff = None
    remove_stale_temporaries(output.parent, output.name)
    try:
        with atomic_path(output, replace=exist_ok) as tmp:
            onnx.save_model(proto, str(tmp))
            onnx.checker.check_model(str(tmp), full_check=True)
            done("checking")
            if verify:
                session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
                max_diff = _compare(session, graph, [x] if batch is not None else [x, x[:1]])
                done("verifying")
                log.debug("onnxruntime vs. PyTorch on %s: max |probability difference| %.2e", described, max_diff)
                if not max_diff <= VERIFY_TOLERANCE:
                    raise RunError(
                        f"the ONNX model's probabilities differ from PyTorch's by {max_diff:.2e} (more than {VERIFY_TOLERANCE:.0e}); "
                        "nothing was written",
                        "try another --opset, or rerun with --debug and report the backbone",
                    )
    except onnx.checker.ValidationError as exc:
        raise RunError(f"the exported graph fails onnx.checker ({reason(exc)}); nothing was written", "try another --opset") from exc
    except FileExistsError as exc:  # created by another process while this one exported
        raise InputError(f"{output} already exists", "pass another --output, or --exist-ok to replace it") from exc
    except OSError as exc:
        raise RunError(f"cannot write {output} ({reason(exc)}); nothing was written",
                       "check the folder's permissions and free space") from exc
    return max_diff
