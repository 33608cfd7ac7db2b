"""golabels from Python: adapt an image classifier from a labeled source folder to an unlabeled
target folder, evaluate it, export it to ONNX, predict with it. See docs/python.md; the command
line (`golabels adapt ...`) is the same library."""

from golabels_cli import __version__
from golabels_cli.api import (Label, Report, Run, adapt, compare, config, evaluate, export_onnx, load_config, predict, report,
                              resolve_config, resume)
from golabels_cli.config import AdaptConfig
from golabels_cli.errors import GolabelsError, InputError, Interrupted, RunError

__all__ = ["AdaptConfig", "GolabelsError", "InputError", "Interrupted", "Label", "Report", "Run", "RunError", "__version__", "adapt",
           "compare", "config", "evaluate", "export_onnx", "load_config", "predict", "report", "resolve_config", "resume"]
