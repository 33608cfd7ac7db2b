"""--logger tensorboard | mlflow: a run's figures in the experiment tracker its user already reads.

Each tracker gets the same scalars as metrics.jsonl (every logged row, at its iteration), the
resolved config as hyper-parameters, and the final figures of summary.json. Each is an optional
extra (`pip install 'golabels[tensorboard]'`, `'golabels[mlflow]'`):

    tensorboard   event files in RUN/tensorboard/ (tensorboard --logdir runs/adapt)
    mlflow        a run in the experiment $MLFLOW_EXPERIMENT_NAME (default "golabels") of the
                  tracking server $MLFLOW_TRACKING_URI (MLflow's own default without it), named
                  after the run directory; a resumed run logs its new iterations to a new MLflow run

A tracker that fails mid-run (a tracking server gone) costs a warning, never the training.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from .errors import InputError, reason

log = logging.getLogger("golabels")

LOGGERS = ("tensorboard", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
FINAL_KEYS = ("target_acc", "target_mean_class_acc", "images_per_s", "seconds")


def check_logger(name: str | None) -> None:
    """An InputError, before anything runs, when the tracker's package is not installed."""
    if name is None:
        return
    import importlib.util

    if importlib.util.find_spec(_PACKAGES[name]) is None:
        raise InputError(f"--logger {name} needs the {_PACKAGES[name]} package, which is not installed",
                         f"pip install 'golabels[{name}]', or leave --logger out")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers (not its iteration, lists or missing values)."""
    return {k: float(v) for k, v in row.items()
            if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resumed_at + 1 if resumed_at else None)

    def log_row(self, row: dict[str, Any]) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, row["iter"])

    def finish(self, summary: dict[str, Any]) -> None:
        final = {f"final/{k}": summary[k] for k in FINAL_KEYS if isinstance(summary.get(k), (int, float))}
        self.writer.add_hparams(_hyperparameters(self.config), final, run_name=".")
        self.close()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_at: int):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "golabels")
        tags = {"golabels.run_dir": str(run_dir), **({"golabels.resumed_at": str(resumed_at)} if resumed_at else {})}
        self.run = mlflow.start_run(run_name=run_dir.name, tags=tags)
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log_row(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics(scalars(row), step=row["iter"])

    def finish(self, summary: dict[str, Any]) -> None:
        final = {f"final_{k}": float(summary[k]) for k in FINAL_KEYS if isinstance(summary.get(k), (int, float))}
        self.mlflow.log_metrics(final, step=summary["iters"])
        self.mlflow.end_run()

    def close(self) -> None:
        self.mlflow.end_run(status="KILLED")


class Tracker:
    """The run's tracker, or nothing (name None); every call guarded so that a failing tracker
    is switched off with one warning."""

    def __init__(self, name: str | None, run_dir: Path, config: dict[str, Any], resumed_at: int = 0):
        self.name, self.backend = name, None
        if name is not None:
            self._call(lambda: setattr(self, "backend", {"tensorboard": TensorBoard, "mlflow": MLflow}[name](run_dir, config, resumed_at)))

    def _call(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a tracker's failure of any kind must not stop the training
            log.warning("--logger %s failed (%s): the run goes on without it; metrics.jsonl has every figure", self.name, reason(exc))
            self.backend = None

    def log_row(self, row: dict[str, Any]) -> None:
        if self.backend is not None:
            self._call(lambda: self.backend.log_row(row))

    def finish(self, summary: dict[str, Any]) -> None:
        if self.backend is not None:
            self._call(lambda: self.backend.finish(summary))
            self.backend = None

    def close(self) -> None:
        """An interrupted or failed run: what was logged stays, marked unfinished where the tracker can say so."""
        if self.backend is not None:
            self._call(self.backend.close)
            self.backend = None
