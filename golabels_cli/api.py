"""golabels from Python: what the seven commands do, as functions (docs/python.md); the command line
(cli.py) and the demo call these.

    import golabels

    cfg = golabels.config("photos/studio", "photos/site", backbone="resnet50", iters=2000)
    run = golabels.adapt(cfg, out="runs/site")              # -> Run(run_dir, summary)
    result = golabels.evaluate(run.run_dir, "photos/site-labeled")
    onnx = golabels.export_onnx(run.run_dir)                   # -> ExportResult (.path, ...)
    for p in golabels.predict(onnx.path, ["new/"]):            # -> Label(path, label, confidence, ...)
        print(p.path, p.label)
    report = golabels.report(run.run_dir)                      # -> Report(record, plots)
    table = golabels.compare(["runs/fixed", "runs/go"], eval_dir="photos/site-labeled")  # -> dict

`golabels demo` is these calls on generated digits.

Every function checks its inputs as the command does and raises golabels_cli.errors.InputError
(bad input) or RunError (the run failed) with the same one-line message; nothing is printed but
the log of the "golabels" logger. `import golabels` loads no torch until a function needs it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator

from .choices import DEVICES
from .config import FIELDS, AdaptConfig, build_config, check_choice, load_yaml
from .errors import GolabelsError, InputError
from . import run_files

if TYPE_CHECKING:
    import numpy as np

    from .export import ExportResult
    from .inference import EvalResult


# The commands' messages name flags; a caller of these functions passes arguments. Only the names
# the functions take are translated (an AdaptConfig field, out, exist_ok, ...).
_API_ARGUMENTS = {*FIELDS, "out", "exist_ok", "output", "batch", "opset", "top_k"}
_RESUME_COMMAND = re.compile(r"golabels adapt --resume (\S+)")
_FLAG = re.compile(r"--(no-)?([a-z][a-z0-9-]*)(?: (N|FILE|DIR|LIST|[0-9][0-9.e-]*)\b)?")


def api_words(text: str) -> str:
    """A command's message as the functions' caller reads it: `--exist-ok` -> `exist_ok=True`,
    `--iters 2000` -> `iters=2000`, `--iters must be` -> `iters must be`, `golabels adapt --resume RUN` -> `golabels.resume('RUN')`."""
    text = _RESUME_COMMAND.sub(lambda m: f"golabels.resume({m.group(1).rstrip('.,;')!r})", text)

    def argument(m: re.Match) -> str:
        negated, name, value = m.group(1), m.group(2).replace("-", "_"), m.group(3)
        if name not in _API_ARGUMENTS:
            return m.group(0)
        if value is None:
            kind = FIELDS[name].type if name in FIELDS else ("bool" if name == "exist_ok" else "")
            if not kind.startswith("bool"):
                return name
            value = "False" if negated else "True"
        return f"{name}={value}"

    return _FLAG.sub(argument, text)


# Set while a command of the CLI runs (cli.guarded): its errors keep the flags the user typed.
command_line: contextvars.ContextVar[bool] = contextvars.ContextVar("golabels_command_line", default=False)


def _in_api_words(fn: Callable) -> Callable:
    """fn raising its errors' messages and hints in argument names (api_words), same type, same
    cause; as they are when a CLI command calls it."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GolabelsError as exc:
            if command_line.get():
                raise
            exc.message = api_words(exc.message)
            exc.hint = api_words(exc.hint) if exc.hint else exc.hint
            exc.args = (exc.message,)
            raise

    return wrapped


@dataclass(frozen=True)
class Run:
    """A finished run: its directory and its summary.json's figures. Under torchrun only rank 0
    writes the run: the other processes get run_dir None and an empty summary."""

    run_dir: Path | None
    summary: dict[str, Any]

    @classmethod
    def of(cls, summary: dict[str, Any]) -> "Run":
        return cls(Path(summary["run_dir"]) if summary.get("run_dir") else None, summary)

    @property
    def model_path(self) -> Path | None:
        return self.run_dir / run_files.MODEL if self.run_dir is not None else None

    @property
    def target_acc(self) -> float | None:
        """Accuracy on --eval-dir's labels, when the run had them."""
        return self.summary.get("target_acc")


@dataclass(frozen=True)
class Label:
    """One image's prediction."""

    path: str
    label: str
    confidence: float
    probabilities: "np.ndarray" = field(repr=False)  # [classes], in the model's class order
    classes: list[str] = field(repr=False)
    backend: str = field(default="", repr=False)  # what computed it: "onnxruntime (CPUExecutionProvider)", "torch (cpu)", ...


@dataclass(frozen=True)
class Report:
    """A run's report: `record` (report.RunRecord, or report.SearchRecord for a --method auto run),
    and the report-*.png figures written (None: matplotlib is not installed; [] when not asked)."""

    record: Any
    plots: list[Path] | None = None

    @property
    def is_search(self) -> bool:
        from .report import SearchRecord

        return isinstance(self.record, SearchRecord)

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "plots": None if self.plots is None else [str(p) for p in self.plots]}


@_in_api_words
def config(source: str | Path | None = None, target: str | Path | None = None, **options: Any) -> AdaptConfig:
    """An adapt config from Python names (`batch_size=4`, `freeze_backbone=True`), every default
    filled in and every value checked, as `golabels adapt SOURCE TARGET --batch-size 4` would."""
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown option {unknown[0]!r}", "pass AdaptConfig's field names, e.g. batch_size=4")
    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    return build_config({**values, **({"source": str(source)} if source is not None else {}),
                         **({"target": str(target)} if target is not None else {})})


@_in_api_words
def load_config(path: str | Path, **options: Any) -> AdaptConfig:
    """The config of a YAML file (a run's config.yaml replays that run), `options` applied on top."""
    values = {k: v for k, v in load_yaml(path).items() if k in FIELDS}
    return config(**{**values, **options})


@_in_api_words
def resolve_config(cfg: AdaptConfig) -> AdaptConfig:
    """A copy of cfg as the run will write it to config.yaml (`adapt --print-config`): the defaults
    that follow the source folder (balancing) and the backbone (its input size) resolved. Reads
    the source folder; trains nothing."""
    from .training import resolve_config as resolved

    return resolved(cfg)


def _checked_config(cfg: Any) -> AdaptConfig:
    """cfg checked as the command line checks its options, however it was made (by config(),
    by hand, or changed since): a checked copy; InputError before anything is created."""
    if not isinstance(cfg, AdaptConfig):
        raise InputError(f"adapt takes an AdaptConfig, got {type(cfg).__name__}", "make one with golabels.config(SOURCE, TARGET, ...)")
    return build_config(dataclasses.asdict(cfg))


def _path(name: str, value: Any, optional: bool = False) -> None:
    """A path argument is a str or an os.PathLike (bytes and lists are not): InputError naming it,
    not a TypeError from deep inside."""
    if value is None and optional:
        return
    if not isinstance(value, (str, os.PathLike)) or isinstance(os.fspath(value), bytes):
        shown = repr(value)
        raise InputError(f"{name} must be a path (str or Path), got {type(value).__name__} "
                         f"{shown if len(shown) <= 60 else shown[:57] + '...'}", "os.fsdecode() turns bytes into a str path"
                         if isinstance(value, bytes) else None)


def _count(name: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InputError(f"{name} must be an integer of at least {least}, got {value!r}")


@_in_api_words
def adapt(cfg: AdaptConfig, out: str | Path | None = None, exist_ok: bool = False, progress: Callable[[Any], None] | None = None) -> Run:
    """Train on cfg.source (labeled) and cfg.target (unlabeled) into `out` (default runs/adapt/exp,
    exp2, ...; never overwritten unless `exist_ok`). `progress` receives golabels_cli.progress's
    events (RunStarted, StepDone, RowLogged, ...) as the run goes."""
    from .distributed import launched_by_torchrun
    from .progress import no_events
    from .training import adapt as train_new

    cfg = _checked_config(cfg)
    if cfg.devices > 1 and not launched_by_torchrun():
        raise InputError(f"devices={cfg.devices} starts worker processes, which golabels.adapt does not",
                         f"run golabels adapt --devices {cfg.devices}, or this script under torchrun")
    return Run.of(train_new(cfg, out, exist_ok, progress or no_events))


@_in_api_words
def resume(run_dir: str | Path, progress: Callable[[Any], None] | None = None, out: str | Path | None = None, **overrides: Any) -> Run:
    """Continue an interrupted run to its own iters, or to `iters=N` (not below the iteration it
    reached; the schedule then follows the new length); otherwise only what leaves the weights as
    they would be may change (device, workers, save_every, ...). With `out` (a new or empty
    folder) the run continues there and `run_dir` stays as it is: a finished run made longer."""
    from .config import RESUME_LENGTH, RESUME_OPTIONS
    from .progress import no_events
    from .training import resume as train_on

    _path("run_dir", run_dir)
    refused = sorted(set(overrides) - set(RESUME_OPTIONS) - set(RESUME_LENGTH))
    if refused:
        raise InputError(f"{refused[0]} can't change on resume: a resumed run keeps its own config",
                         f"only {', '.join((*RESUME_OPTIONS, *RESUME_LENGTH))} may change")
    _path("out", out, optional=True)
    return Run.of(train_on(run_dir, overrides, progress or no_events, out))


@_in_api_words
def evaluate(run_or_model: str | Path, data_dir: str | Path, device: str = "auto", batch_size: int = 64, workers: int = 0) -> "EvalResult":
    """Accuracy, per-class accuracy and the confusion matrix of a run's model on a labeled folder."""
    from .evaluate import evaluate as evaluate_model

    _path("run_or_model", run_or_model)
    _path("data_dir", data_dir)
    _count("batch_size", batch_size, 1)
    _count("workers", workers, 0)
    check_choice("device", device, DEVICES)
    return evaluate_model(run_or_model, data_dir, device=device, batch_size=batch_size, workers=workers)


@_in_api_words
def export_onnx(run_or_model: str | Path, output: str | Path | None = None, opset: int = 18, batch: int | None = None,
                verify: bool = True, exist_ok: bool = False) -> "ExportResult":
    """model.onnx beside the model (or `output`), its classes and preprocessing in its metadata,
    verified against PyTorch; never replaces a file unless `exist_ok`."""
    from .export import export_onnx as export_model

    _path("run_or_model", run_or_model)
    _path("output", output, optional=True)
    for name, value in (("opset", opset), ("batch", batch)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):  # the range is export's to name
            raise InputError(f"{name} must be an integer, got {value!r}")
    return export_model(run_or_model, output, opset=opset, batch=batch, verify=verify, exist_ok=exist_ok)


@_in_api_words
def predict(model: str | Path, images: str | Path | Iterable[str | Path], device: str = "auto", batch_size: int = 32, workers: int = 0,
            on_skip: Callable[[str, str], None] | None = None, paths_from: BinaryIO | None = None, null: bool = False) -> Iterator[Label]:
    """Labels for image files and folders (recursive), in input order, from a run directory, a
    model.safetensors or a model.onnx (onnxruntime only: no torch). `images` is one path, or an
    iterable of paths; with `paths_from` (a binary stream: the command line's stdin), "-" among
    them reads paths from it, one per line (per NUL with `null`). An image that cannot be read
    goes to `on_skip(path, why)` (default: a warning) and the others go on."""
    from .predict import iter_inputs, open_predictor, warn_skipped

    _path("model", model)
    if isinstance(images, (bytes, bytearray)):
        _path("images", images)
    if isinstance(images, (str, Path)):
        images = [images]  # one path, not its characters
    try:
        images = [str(p) if isinstance(p, (str, Path)) else p for p in images]
    except TypeError:
        raise InputError(f"images must be a path or an iterable of paths, got {type(images).__name__}") from None
    wrong = next((p for p in images if not isinstance(p, str)), None)
    if wrong is not None:
        raise InputError(f"images must be paths (str or Path), got {type(wrong).__name__} {wrong!r}"[:160])
    _count("batch_size", batch_size, 1)
    _count("workers", workers, 0)
    check_choice("device", device, DEVICES)
    if "-" in images and paths_from is None:
        raise InputError("'-' reads paths from stdin on the command line only", "pass the paths themselves")
    skip = on_skip or warn_skipped
    return _labels(open_predictor(model, device), iter_inputs(images, paths_from, skip, null=null), batch_size, workers, skip)


def _labels(predictor, paths: Iterator[str], batch_size: int, workers: int, skip: Callable[[str, str], None]) -> Iterator[Label]:
    from .predict import predict_batches

    for batch in predict_batches(predictor, paths, batch_size, workers, skip):
        for p in batch:
            best = int(p.probabilities.argmax())
            yield Label(p.path, predictor.classes[best], float(p.probabilities[best]), p.probabilities, predictor.classes,
                        predictor.backend)


@_in_api_words
def compare(runs: Iterable[str | Path], eval_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64, workers: int = 0,
            seed: int = 0) -> dict[str, Any]:
    """Finished runs side by side (`golabels compare`): the options that differ, their groups
    (runs that differ only in how they ran, the seed among it), each one's validators, and with
    `eval_dir` (a labeled target folder) accuracies with 95% bootstrap intervals and each group
    against the first on the same images (a paired permutation test). A JSON-able dict."""
    from .compare import compare as compare_runs

    if isinstance(runs, (str, Path, bytes)):
        raise InputError(f"runs must be a list of run directories, got one {type(runs).__name__}", "pass two runs or more")
    runs = list(runs)
    for run_dir in runs:
        _path("runs", run_dir)
    _path("eval_dir", eval_dir, optional=True)
    _count("batch_size", batch_size, 1)
    _count("workers", workers, 0)
    _count("seed", seed, 0)
    check_choice("device", device, DEVICES)
    return compare_runs(runs, eval_dir, device=device, batch_size=batch_size, workers=workers, seed=seed)


@_in_api_words
def report(run_dir: str | Path, plots: bool = False) -> Report:
    """A run's record as `golabels report` shows it (its summary, metrics, validators; a search's
    candidates), and with `plots` its report-*.png figures written into the run directory."""
    from .report import is_search, load_run, load_search
    from .results import plots_available, write_plots

    _path("run_dir", run_dir)
    if is_search(run_dir):
        from .results import write_search_figure

        search = load_search(run_dir)
        figure = write_search_figure(search) if plots else None
        return Report(search, ([figure] if figure else []) if not plots or plots_available() else None)
    record = load_run(run_dir)
    return Report(record, write_plots(record) if plots else [])
