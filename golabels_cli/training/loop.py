"""The training loop, top to bottom.

Each step draws `batch_size` labeled source images and `batch_size` unlabeled target images,
runs them through the classifier in one forward pass (so BatchNorm sees both domains), and
minimizes  L = CE(source logits, source labels) + trade_off * L_adv + L_extra
+ target_loss_weight * L_target  where L_adv is the alignment term's discriminator loss (see
`methods`) with the chosen domain targets (see `domain_labels`) and L_target the recipe's losses
on the target's predictions (MCC, BNM, IM).

Nothing is lost on the way: every `save_every` iterations, on Ctrl-C / SIGTERM (after the step in
progress) and at the end, the whole training state goes to checkpoint.pt atomically — weights,
optimizer, RNG states, sampler positions, metrics so far — and a resumed run continues from it to
the same final weights, bit for bit on the CPU. A non-finite loss stops the run before anything
broken is saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch

from ..checkpoint import save_model
from .. import run_files
from ..data import ImageSet, train_loader, train_sampler, train_transform
from ..device_batches import batch_loader, device_batches, loader_crop
from ..distributed import all_mean, all_min, any_rank, shared
from ..errors import Interrupted, RunError
from ..formats import json_text
from ..model_info import ModelInfo
from ..progress import RowLogged, RunFinished, RunStarted, StepDone
from ..trackers import Tracker
from .run_dir import append, checkpoint, kept, logged_rows, open_metrics, results_files, save_checkpoint, summary, write, write_failure
from .signals import stop_requests
from .runtime import set_rng_state
from .selection import calibrate, keep_if_selected, target_batchnorm, validate
from .state import LOSS_KEYS, STAT_KEYS, LoopState, Progress, Training
from .schedule import Schedule
from .step import Classify, Step, feature_batches, fit_head, step_of
from .outputs import role_outputs, target_predictions
from .path_hint import frozen_path_hint
from .target_estimate import estimate_target, warn_on_label_shift
from .threads import step_threads

log = logging.getLogger("golabels")


def train(t: Training, run_dir: Path | None, state: LoopState, progress: Progress, rng: dict | None = None) -> dict[str, Any]:
    """Train from state.iteration to cfg.iters; returns the summary. With several processes every
    rank runs the loop on its own batches; only rank 0 (run_dir not None) evaluates and writes.
    The steps, the evaluations and the final BatchNorm pass run on the run's --threads."""
    with step_threads(t.cfg.threads):
        return _train(t, run_dir, state, progress, rng)


def _train(t: Training, run_dir: Path | None, state: LoopState, progress: Progress, rng: dict | None) -> dict[str, Any]:
    cfg, d = t.cfg, t.dist
    signals = contextlib.ExitStack()
    # From here on a signal stops the run after a step: one during the head start or while the
    # loaders start is not lost, it stops the run after its first step.
    began: list[Session] = []  # the session, once begun: what a stop at once says is kept

    def stopped_at_once() -> str:
        saved = began[0].saved_at if began else None
        kept_at = f"the checkpoint of iteration {saved} is kept" if saved else "nothing was saved"
        then = f"resume with: golabels adapt --resume {run_dir}" if saved else "start the run again"
        return f"error: stopped at once during a long computation; {kept_at} — {then}"

    stop = signals.enter_context(stop_requests(at_once=stopped_at_once, acknowledge=_acknowledge if d.main else None))
    try:
        streams = open_streams(t, state)
        if rng is not None:
            set_rng_state(rng, t.device)  # after the loaders: creating one draws from the global generator
        progress(RunStarted(str(run_dir) if run_dir else None, cfg.iters, state.iteration, str(t.device), t.source.classes, d.world,
                            progress_terms(t)))
        run = Session.begin(t, run_dir, state, progress)
        began.append(run)
    except BaseException:
        signals.close()
        raise
    completed = False
    schedule = Schedule.of(cfg, t.lr_scale)
    try:
        with signals:
            for step in range(state.iteration, cfg.iters):
                it = step + 1
                if (cfg.balance_target or cfg.label_shift_weights) and step and step % cfg.refresh_every == 0:
                    estimate_target(t, state, step)
                    streams.refresh(state, step)
                lr = schedule.step_update(t.optimizer, step)
                coeff = schedule.coeff(step)
                step_started = time.perf_counter()
                xs, ys, xt, target_index = streams.next()
                logged = streams.step(xs, ys, xt, coeff, streams.class_weights, target_index)
                run.add(it, logged, len(xs) + (len(xt) if xt is not None else 0))
                progress(StepDone(it))
                if step == run.start and d.main and (hint := frozen_path_hint(t, xs, time.perf_counter() - step_started, cfg.iters - it)):
                    progress(hint)

                evaluate = it == cfg.iters or bool(cfg.eval_every and it % cfg.eval_every == 0)
                if it % cfg.log_every == 0 or it == cfg.iters or evaluate:
                    run.log_row(it, lr, coeff, evaluate)
                # With several ranks, all of them stop at the step where any was asked to.
                stopping = any_rank(d, bool(stop)) if d.enabled else bool(stop)
                if it < cfg.iters and ((cfg.save_every and it % cfg.save_every == 0) or stopping):
                    run.check_finite(it)
                    run.save(it)
                    if stopping:
                        raise Interrupted(
                            f"{stop[0] if stop else 'interrupted'} at iteration {it} of {cfg.iters}; "
                            f"the training state is saved in {(run_dir or Path('RUN')) / run_files.CHECKPOINT}",
                            f"resume with: golabels adapt --resume {run_dir}",
                        )
            run.check_finite(cfg.iters)
        completed = True
    except (Interrupted, RunError):
        raise
    except KeyboardInterrupt:
        # A second Ctrl-C stops at once; the newest checkpoint is intact (writes are atomic).
        raise Interrupted(
            f"stopped at once; {'the checkpoint of iteration ' + str(run.saved_at) + ' is kept' if run.saved_at else 'nothing was saved'}",
            f"resume with: golabels adapt --resume {run_dir}" if run.saved_at else "start the run again",
        ) from None
    except Exception:
        if run.saved_at and d.main:
            log.error("the checkpoint of iteration %d is kept: resume with golabels adapt --resume %s", run.saved_at, run_dir)
        raise
    finally:
        run.close(completed)
        streams.close()
    return _finish_despite_a_signal(t, run)


def _acknowledge(signal_name: str) -> None:
    """A first Ctrl-C or SIGTERM is answered at once: a step can take a minute on a CPU."""
    key = "Ctrl-C" if signal_name == "interrupted" else "SIGTERM"
    log.warning("%s: stopping after the step in progress, then saving the training state; %s again stops at once "
                "(the newest checkpoint is kept)", key, key)


def _finish_despite_a_signal(t: Training, run: "Session") -> dict[str, Any]:
    """finish(), which a first Ctrl-C or SIGTERM no longer stops: the training is done, and what is
    left is seconds of writing. A second one stops at once, saying how to finish."""

    def say(signal_name: str) -> None:
        log.warning("%s after the last iteration: finishing the final writes (a second signal stops at once)", signal_name)

    try:
        with stop_requests(say if t.dist.main else None):
            return finish(t, run)
    except KeyboardInterrupt:
        kept_at = f"the checkpoint of iteration {run.saved_at} is kept" if run.saved_at else "nothing was saved"
        raise Interrupted(f"stopped at once during the final writes; {kept_at}",
                          f"finish them with: golabels adapt --resume {run.run_dir}" if run.saved_at else "start the run again") from None


@dataclass
class Streams:
    """Where the steps' batches come from, and the modules they go through (DDP-wrapped with
    several processes, compiled with --compile)."""

    t: Training
    batches: Callable[[ImageSet, int, int, list[int] | None], Iterator]  # (images, stream, first step, balance by)
    source: Iterator
    target: Iterator | None
    step: Step  # the forward pass and the objective, DDP-wrapped or compiled as this process runs them
    class_weights: torch.Tensor | None  # --label-shift-weights: of the source classes

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(source batch, its labels, target batch, the target rows' indices in t.target), the
        target's None when the recipe draws none."""
        xs, ys, _ = next(self.source)
        if self.target is None:
            return xs, ys, None, None
        xt, _, target_index = next(self.target)
        return xs, ys, xt, target_index

    def close(self) -> None:
        """Let go of the loaders now, so that their worker processes stop before the process exits
        (whatever still holds the loop's frame, such as an exception on its way up)."""
        self.source = self.target = None

    def refresh(self, state: LoopState, step: int) -> None:
        """After a new target estimate: the target drawn by its pseudo-labels, the source weighted by its prior."""
        if self.t.cfg.balance_target:
            self.target = self.batches(self.t.target, 1, step, _target_balance(self.t, state))
        if self.t.cfg.label_shift_weights:
            self.class_weights = torch.tensor(state.class_weights, device=self.t.device)


def open_streams(t: Training, state: LoopState) -> Streams:
    """The samplers start where the run left them: each step takes batch_size draws per domain."""
    cfg, d, start = t.cfg, t.dist, state.iteration
    if t.features is not None:
        batches = functools.partial(_feature_stream, t)
        trained: torch.nn.Module = Classify(t.model)
    elif cfg.augment == "batched":
        batches = functools.partial(_device_stream, t)
        trained = t.model
    else:
        batches = functools.partial(_image_stream, t, train_transform(t.data_config, cfg.min_crop, cfg.hflip))
        trained = t.model
    if start == 0 and cfg.head_start:
        fit_head(t)
    if start == 0 and t.objective.bank is not None:
        fill_bank(t)
    source = batches(t.source, 0, start, t.source.labels if cfg.balance_source else None)
    target = batches(t.target, 1, start, _target_balance(t, state)) if t.recipe.uses_target else None
    class_weights = torch.tensor(state.class_weights, device=t.device) if cfg.label_shift_weights and state.class_weights else None
    objective = t.objective
    if d.enabled:
        # DDP averages the gradients over ranks in backward; the modules it wraps stay the ones saved.
        ids = [t.device.index] if t.device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(trained, device_ids=ids)
        if objective.adversarial:
            objective = objective.replaced(discriminator=torch.nn.parallel.DistributedDataParallel(t.disc, device_ids=ids))
    forward = torch.compile(trained) if t.speed.compile and t.features is None else trained
    step = step_of(t, forward, objective)
    return Streams(t, batches, source, target, step, class_weights)


@torch.no_grad()
def fill_bank(t: Training) -> None:
    """A neighbourhood loss's memory of the target set, filled before the first step: the model's
    features and predictions of every target image, in eval mode (the BatchNorm statistics are
    not touched: the run's first step is the one an uninterrupted run takes)."""
    was_training = t.model.training
    t.model.eval()
    try:
        logits, features = role_outputs(t, "target", t.target)
    finally:
        t.model.train(was_training)
    t.objective.bank.fill(features.to(t.device), logits.to(t.device))


def _target_balance(t: Training, state: LoopState) -> list[int] | None:
    return state.pseudo_labels.tolist() if t.cfg.balance_target and state.pseudo_labels is not None else None


def _feature_stream(t: Training, images: ImageSet, stream: int, first_step: int, balance_by: list[int] | None) -> Iterator:
    cfg = t.cfg
    role, labels = ("source", torch.tensor(images.labels)) if stream == 0 else ("target", None)
    return feature_batches(t.features[role].values, labels, cfg.batch_size,
                           train_sampler(images, cfg.seed, stream, first_step * cfg.batch_size, t.dist.rank, t.dist.world, balance_by))


def _image_stream(t: Training, transform, images: ImageSet, stream: int, first_step: int, balance_by: list[int] | None) -> Iterator:
    cfg, decoded = t.cfg, t.decoded or {}
    return iter(train_loader(images, transform, t.data_config, cfg.batch_size, cfg.seed, stream, t.workers, t.speed.pin_memory,
                             first_step * cfg.batch_size, decoded.get("source" if stream == 0 else "target"), t.dist.rank,
                             t.dist.world, balance_by))


def _device_stream(t: Training, images: ImageSet, stream: int, first_step: int, balance_by: list[int] | None) -> Iterator:
    cfg = t.cfg
    loader = batch_loader(images, t.decoded["source" if stream == 0 else "target"], cfg.min_crop, cfg.hflip, cfg.batch_size, cfg.seed,
                          stream, t.workers, t.speed.pin_memory, first_step * cfg.batch_size, t.dist.rank, t.dist.world, balance_by,
                          crop_to=loader_crop(t.device, t.data_config))
    return device_batches(loader, t.device, t.data_config, t.speed.channels_last)


@dataclass
class Window:
    """The metrics window in progress: sums of the losses and statistics since the last row, on
    the device (a host sync only when a row is logged), its steps and the images trained on."""

    sums: dict[str, torch.Tensor]
    steps: int
    samples: torch.Tensor

    @classmethod
    def restored(cls, state: LoopState, device: torch.device) -> "Window":
        return cls({k: torch.tensor(state.sums.get(k, 0.0), device=device) for k in STAT_KEYS}, state.window,
                   torch.tensor(float(state.sums.get("samples", 0.0)), device=device))

    @classmethod
    def empty(cls, device: torch.device) -> "Window":
        return cls({k: torch.zeros((), device=device) for k in STAT_KEYS}, 0, torch.zeros((), device=device))

    def add(self, logged: dict[str, torch.Tensor], images: int) -> None:
        self.samples += images
        for k, v in logged.items():
            self.sums[k] += v
        self.steps += 1

    def means(self, d) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The sums and image count as means over ranks, in one all-reduce."""
        if not d.enabled:
            return self.sums, self.samples
        reduced = all_mean(d, torch.stack([*(self.sums[k] for k in STAT_KEYS), self.samples]))
        return dict(zip(STAT_KEYS, reduced[:-1])), reduced[-1]


@dataclass
class Session:
    """One process's pass over the loop: its metrics window, the first non-finite loss, what it
    writes, and the iteration of the newest checkpoint on disk."""

    t: Training
    run_dir: Path | None
    state: LoopState
    progress: Progress
    window: Window
    first_bad: torch.Tensor  # the first iteration each loss was not finite (inf: not yet), on the device
    saved_at: int | None
    start: int
    seconds_before: float
    started: float
    metrics: IO[str] | None
    tracker: Tracker
    rows: list[dict[str, Any]] | None  # every row logged, earlier sessions' too (rank 0): results.csv and results.png
    eval_seconds_before: float = 0.0  # state.eval_seconds when this session began
    save_seconds: float = 0.0  # this session's writing of checkpoints

    @classmethod
    def begin(cls, t: Training, run_dir: Path | None, state: LoopState, progress: Progress) -> "Session":
        cfg, device, main = t.cfg, t.device, t.dist.main
        first_bad = torch.full((len(LOSS_KEYS),), math.inf, device=device)
        t.model.train()
        if t.disc is not None:
            t.disc.train()
        start = state.iteration
        seconds_before, started = state.seconds, time.perf_counter()
        metrics = open_metrics(run_dir / run_files.METRICS) if main else None
        rows = (logged_rows(run_dir) if start else []) if main else None
        tracker = Tracker(cfg.logger if main else None, run_dir, dataclasses.asdict(cfg), start)
        return cls(t, run_dir, state, progress, Window.restored(state, device), first_bad, start or None, start,
                   seconds_before, started, metrics, tracker, rows, state.eval_seconds)

    @property
    def seconds(self) -> float:
        """Training time of the run so far, over all its sessions."""
        return self.seconds_before + time.perf_counter() - self.started

    def step_seconds(self, session_seconds: float) -> float:
        """Of this session's seconds, those of the training steps alone (their batches included):
        without evaluating and without writing checkpoints."""
        return session_seconds - (self.state.eval_seconds - self.eval_seconds_before) - self.save_seconds

    def add(self, it: int, logged: dict[str, torch.Tensor], images: int) -> None:
        """A step's logged losses and statistics (Step's), into the window and the check for a non-finite loss."""
        losses = torch.stack([logged[k] for k in LOSS_KEYS]).float()
        self.first_bad = torch.minimum(self.first_bad, torch.where(torch.isfinite(losses), math.inf, float(it)))
        self.window.add(logged, images)

    def check_finite(self, iteration: int) -> None:
        """A loss that was not finite since the last check stops every rank at the same iteration."""
        self.first_bad = all_min(self.t.dist, self.first_bad)
        first = float(self.first_bad.min())
        if not math.isfinite(first):
            return
        names = [k for k, v in zip(LOSS_KEYS, self.first_bad.tolist()) if v == first]
        values = {k: float(self.window.sums[k]) / max(self.window.steps, 1) for k in names}
        saved = f"the checkpoint of iteration {self.saved_at} is kept in {self.run_dir}" if self.saved_at else "nothing was saved"
        raise shared(RunError(f"training diverged at iteration {int(first)}: {', '.join(f'{k} = {v}' for k, v in values.items())}; {saved}",
                              "lower --lr or --trade-off and start a new run"))

    def log_row(self, it: int, lr: float, coeff: float, evaluate: bool) -> None:
        """A metrics row, the mean over ranks, with the validators when `evaluate` (rank 0 only)."""
        t, state, main = self.t, self.state, self.t.dist.main
        self.check_finite(it)
        sums, mean_samples = self.window.means(t.dist)
        row = metrics_row(t, it, lr, coeff, sums, self.window.steps)
        # every rank's images: the proof that all of them trained
        row["samples_per_step"] = round(float(mean_samples) * t.dist.world / self.window.steps, 3)
        if evaluate and main:
            started = time.perf_counter()
            scores = validate(t, state)
            state.eval_seconds += time.perf_counter() - started
            row.update({k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()})
            state.evals.append({"iter": it, **scores})
            warn_on_label_shift(t, state, it, scores)
            keep_if_selected(t, state, it, scores)
        if main:
            logged = append(self.metrics, row, self.run_dir)
            if self.rows is not None:
                self.rows.append(logged)
            self.tracker.log_row(row)
        self.progress(RowLogged(row))
        state.last_row = row
        self.window = Window.empty(t.device)

    def save(self, iteration: int) -> None:
        """The whole training state to checkpoint.pt. Before the end, the window in progress as
        every rank's mean, so that each rank resumes from it (collective: every rank saves at the
        same iterations; the final save is rank 0's alone)."""
        window_sums, window_samples = self.window.sums, self.window.samples
        if iteration < self.t.cfg.iters:
            window_sums, window_samples = self.window.means(self.t.dist)
        if self.t.dist.main:
            state = self.state
            state.iteration = iteration
            state.sums = {**{k: float(v) for k, v in window_sums.items()}, "samples": float(window_samples)}
            state.window = self.window.steps
            state.seconds = self.seconds
            started = time.perf_counter()
            save_checkpoint(checkpoint(self.t, state), self.run_dir / run_files.CHECKPOINT, self.saved_at, self.run_dir)
            self.save_seconds += time.perf_counter() - started
        self.saved_at = iteration

    def close(self, completed: bool) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if not completed:
            self.tracker.close()


def finish(t: Training, run: Session) -> dict[str, Any]:
    """The end of a run on rank 0: the final checkpoint, the selected snapshot under the statistics
    it was scored with as model.safetensors, the summary and its figure. Returns the summary."""
    cfg, state, run_dir = t.cfg, run.state, run.run_dir
    seconds = run.seconds
    session_seconds = seconds - run.seconds_before
    step_seconds = run.step_seconds(session_seconds)  # before the final save, which is not of the session's seconds either
    if not t.dist.main:
        return {}
    info = ModelInfo(cfg.backbone, t.source.classes, t.data_config, cfg.bottleneck_dim, cfg.method, cfg.domain_labels)
    if cfg.select != "last" and state.selected_weights is None:
        log.warning("--select %s could not be computed at any evaluated snapshot: model.safetensors holds the last iteration's weights",
                    cfg.select)
        state.selected = {"iter": cfg.iters, "value": None}
    run.save(cfg.iters)
    if state.selected_weights is not None:
        t.model.load_state_dict(state.selected_weights)  # training is over: the model becomes the selected snapshot
    with target_batchnorm(t, keep=True):  # the statistics the evaluations were scored with
        pass
    calibration = calibrate(t)
    if calibration is not None:
        info = dataclasses.replace(info, temperature=calibration["temperature"])
        t.model.temperature = calibration["temperature"]  # the mosaic's confidences are the shipped model's
    try:
        save_model(t.model, info, run_dir / run_files.MODEL)
    except Exception as exc:  # OSError, or safetensors' own error type for a failed write
        raise RunError(f"cannot write {run_dir / run_files.MODEL} ({write_failure(exc, run_dir)})", kept(run.saved_at, run_dir)) from exc
    result = summary(t, run_dir, state, seconds, (run.start, session_seconds, step_seconds))
    result["calibration"] = calibration
    result.update(results_files(run_dir, result, dataclasses.asdict(cfg), run.rows, lambda: target_predictions(t)))
    write(run_dir / run_files.SUMMARY, json_text(result) + "\n", run.saved_at)
    run.tracker.finish(result)
    run.progress(RunFinished(result))
    return result


def progress_terms(t: Training) -> tuple[str, ...]:
    """The progress line's figures that can change in this run (progress.RunStarted.terms)."""
    adversarial = ("adv", "disc", *(("relab",) if t.cfg.domain_labels != "fixed" else ())) if t.recipe.adversarial else ()
    return ("cls", *adversarial, *(("tgt-loss",) if t.recipe.target_losses else ()), *(("teach",) if t.teacher else ()),
            *(("tgt-acc",) if t.eval_set else ()))


def metrics_row(t: Training, it: int, lr: float, coeff: float, sums: dict[str, torch.Tensor], window: int) -> dict[str, Any]:
    values = {k: float(v) / window for k, v in sums.items()}  # one host sync per logged row
    row = {"iter": it, **{k: round(v, 6) for k, v in values.items()}, "lr": lr, "lambda": round(coeff, 6)}
    if not t.recipe.adversarial:
        row.update({k: None for k in STAT_KEYS if k not in ("loss_cls", "loss_adv", "loss_target", "loss_teacher")})
    elif t.recipe.alignment.extra_loss is None:
        row["loss_extra"] = None
    if not t.recipe.target_losses:
        row["loss_target"] = None
    if not t.teacher:
        row["loss_teacher"] = None
    return row
