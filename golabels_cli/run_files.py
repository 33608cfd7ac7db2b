"""The files of a run directory, each named once: what `adapt` writes, and what `resume`,
`report`, `eval`, `export` and the Python API read there. Torch-free.

A new output file is a name here (in RUN_FILES when `adapt --exist-ok` may replace it) and its
writer beside the others in training/run_dir.py (`results_files`).
"""

from __future__ import annotations

CONFIG = "config.yaml"  # the resolved config: `adapt --config` replays it
METRICS = "metrics.jsonl"  # one JSON row per --log-every iterations, and one per evaluation
CHECKPOINT = "checkpoint.pt"  # the whole training state: `adapt --resume`
MODEL = "model.safetensors"  # the selected snapshot, with its ModelInfo metadata
SUMMARY = "summary.json"  # the run's figures, written last: its presence means the run finished
RESULTS_CSV = "results.csv"  # metrics.jsonl as a table
RESULTS_FIGURE = "results.png"
TARGET_MOSAIC = "target-mosaic.png"  # target images with their predicted labels
ONNX_MODEL = "model.onnx"  # `golabels export`'s default output, beside the model
TENSORBOARD = "tensorboard"  # --logger tensorboard's event files (a folder)
SEARCH_CANDIDATES = "candidates"  # --method auto: a run directory per candidate recipe, under this folder
SEARCH_TEACHER = "teacher.safetensors"  # --search-pick student: the adapted candidates' ensemble, which teaches the student
SEARCH_STUDENT = "student"  # --search-pick student: the student's run directory
REPORT_PLOTS = ("report-losses.png", "report-discriminator.png", "report-validators.png")  # `golabels report`
SEARCH_REPORT_PLOT = "report-search.png"  # `golabels report` of a search: its candidates' curves side by side

# Every file a run writes under its own name: what `adapt --exist-ok` into a used folder replaces.
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, MODEL, SUMMARY, RESULTS_CSV, RESULTS_FIGURE, TARGET_MOSAIC)


EARLIER_RUN = "earlier-run"  # adapt --exist-ok into a used folder: the earlier run's files, moved here
STOPPED_EXPORT = "model-before-resume"  # resume: a model.onnx exported from the stopped run, renamed (.onnx)


def earlier_run(n: int = 1) -> str:
    """Where `adapt --exist-ok` moves the files of the run it replaces (-2, -3, ... when taken)."""
    return EARLIER_RUN if n == 1 else f"{EARLIER_RUN}-{n}"


def stopped_export(n: int = 1) -> str:
    """What a resume renames model.onnx to: an export of the stopped run, not of the model it will ship (-2, -3, ...)."""
    return f"{STOPPED_EXPORT}.onnx" if n == 1 else f"{STOPPED_EXPORT}-{n}.onnx"


def is_run_output(name: str) -> bool:
    """A name golabels writes in a run folder: adapt's and a search's files, export's default
    output, report's and eval's figures, and metrics or exports a resume set aside."""
    return (name in RUN_FILES or name in (ONNX_MODEL, TENSORBOARD, SEARCH_CANDIDATES, SEARCH_TEACHER, SEARCH_STUDENT, *REPORT_PLOTS,
                                          SEARCH_REPORT_PLOT)
            or (name.startswith("metrics-after-") and name.endswith(".jsonl"))
            or (name.startswith("confusion-") and name.endswith(".png"))
            or (name.startswith(STOPPED_EXPORT) and name.endswith(".onnx")))


def metrics_set_aside(iteration: int, n: int = 1) -> str:
    """Where a resume moves the metrics rows logged after its checkpoint: never overwritten (-2, -3, ...)."""
    return f"metrics-after-{iteration}.jsonl" if n == 1 else f"metrics-after-{iteration}-{n}.jsonl"


def confusion_figures(name: str, n: int = 1) -> tuple[str, str]:
    """`eval --plots`' two files for a folder named `name`: normalized and in image counts (-2, -3, ... when taken)."""
    stem = f"confusion-{name}" if n == 1 else f"confusion-{name}-{n}"
    return f"{stem}.png", f"{stem}-counts.png"
