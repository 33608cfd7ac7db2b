"""--logger tensorboard | mlflow: a run's figures in the experiment tracker its user already reads.

Each tracker gets the same scalars as metrics.jsonl (every logged row, at its iteration), the
resolved config as hyper-parameters, and the final figures of summary.json. Each is an optional
extra (`pip install 'golabels[tensorboard]'`, `'golabels[mlflow]'`):

    tensorboard   one event file per session in RUN/tensorboard/ (tensorboard --logdir runs/adapt):
                  the rows, the hyper-parameters and the final figures together, so that the
                  HParams tab finds the figures of the run it lists; a resumed run adds one file
    mlflow        a run in the experiment $MLFLOW_EXPERIMENT_NAME (default "golabels") of the
                  tracking server $MLFLOW_TRACKING_URI (MLflow's own default without it), named
                  after the run directory; a resumed run logs its new iterations to a new MLflow run

TensorBoard shows the scalars in sections, one per group, the tag `group/name` without the
group's word repeated (loss_cls -> loss/cls, disc_acc -> discriminator/acc, target_acc -> target/acc):

    loss/           the training losses: cls, adv, extra, target (any loss_* key)
    discriminator/  the adversary: acc, acc_src, acc_tgt, relabeled_src, relabeled_tgt, adv_grad_norm
    validators/     the label-free validators --select reads: src_acc, entropy, im, snd, dev
    target/         figures of the target's labels: the --eval-dir oracle (acc, mean_class_acc,
                    acc_train_bn) and the label-shift estimates (prior_shift, predicted_shift,
                    predicted_shift_p); target_acc is here, not among the validators, as it needs labels
    train/          the schedule and throughput: lr, lambda, samples_per_step, and any key not in TAGS
    final/          summary.json's figures at the run's last iteration (FINAL_KEYS)

MLflow has no sections: its metric names are the metrics.jsonl keys (final_<key> for the final ones).
A tracker that fails mid-run (a tracking server gone) costs a warning, never the training.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from .choices import LOGGERS  # noqa: F401 - re-exported: --logger's values
from .errors import InputError, reason
from . import run_files
from .validators import LABEL_FREE

log = logging.getLogger("golabels")

_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
FINAL_KEYS = ("target_acc", "target_mean_class_acc", "images_per_s", "seconds")

# metrics.jsonl key -> TensorBoard tag; every key the training loop writes is here, so that a new
# key lands in train/ only until someone files it (tests/test_feedback.py checks a run's rows).
TAGS = {
    "loss_cls": "loss/cls", "loss_adv": "loss/adv", "loss_extra": "loss/extra", "loss_target": "loss/target",
    "loss_teacher": "loss/teacher",
    "disc_acc": "discriminator/acc", "disc_acc_src": "discriminator/acc_src", "disc_acc_tgt": "discriminator/acc_tgt",
    "relabeled_src": "discriminator/relabeled_src", "relabeled_tgt": "discriminator/relabeled_tgt",
    "adv_grad_norm": "discriminator/adv_grad_norm",
    **{key: f"validators/{key}" for key in LABEL_FREE},
    "target_acc": "target/acc", "target_mean_class_acc": "target/mean_class_acc", "target_acc_train_bn": "target/acc_train_bn",
    "prior_shift": "target/prior_shift", "predicted_shift": "target/predicted_shift", "predicted_shift_p": "target/predicted_shift_p",
    "lr": "train/lr", "lambda": "train/lambda", "samples_per_step": "train/samples_per_step",
}
# A key not in TAGS: its group by prefix (the group's own word dropped), else train/.
PREFIX_TAGS = (("loss_", "loss/"), ("disc_", "discriminator/"), ("relabeled_", "discriminator/relabeled_"),
               ("adv_", "discriminator/adv_"), ("target_", "target/"))
FALLBACK_GROUP = "train"


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: `group/name` (see the module's docstring)."""
    if key in TAGS:
        return TAGS[key]
    for prefix, tag in PREFIX_TAGS:
        if key.startswith(prefix):
            return tag + key[len(prefix):]
    return f"{FALLBACK_GROUP}/{key}"


def final_figures(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json's figures of FINAL_KEYS that the run has (target_acc only with --eval-dir)."""
    return {k: float(summary[k]) for k in FINAL_KEYS
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary[k], bool)}


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
        self.writer = SummaryWriter(log_dir=str(run_dir / run_files.TENSORBOARD), purge_step=resumed_at + 1 if resumed_at else None)

    def log_row(self, row: dict[str, Any]) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(tensorboard_tag(key), value, row["iter"])

    def finish(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"final/{k}": v for k, v in final_figures(summary).items()}
        # Not writer.add_hparams: it opens a second writer, hence a second event file (a second
        # run in TensorBoard's list). The same summaries through the run's own writer instead;
        # the HParams tab reads the metrics' values from the scalars of the same tags.
        for proto in hparams(_hyperparameters(self.config), final):
            self.writer.file_writer.add_summary(proto, summary["iters"])
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, summary["iters"])
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
        final = {f"final_{k}": v for k, v in final_figures(summary).items()}
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
