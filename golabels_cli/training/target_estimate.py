"""What the run reads of the target's classes: pseudo-labels and the class prior they imply
(--balance-target, --label-shift-weights), a snapshot's label-shift figures, and the label-shift
warning."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..data import class_counts, imbalance_ratio, sample_indices
from ..distributed import from_rank_0
from ..label_shift import SHIFT_P_VALUE, SHIFT_WARNING, bbse_prior, class_weights, em_prior, moving_average, shift_p_value, total_variation
from ..methods import get_method
from ..remedies import IMBALANCE_WARNING, remedy_flags, remedy_hint
from .outputs import predicted_counts, role_outputs
from .state import LoopState, Training

log = logging.getLogger("golabels")
CONFUSION_IMAGES = 2000  # training source images BBSE's confusion matrix is taken on, without a held-out split


def eval_shift(t: Training) -> float | None:
    """The measured label shift: total variation between the classes of --eval-dir's labels and the
    source's; None without --eval-dir."""
    if t.eval_set is None:
        return None
    images, to_model = t.eval_set
    counts = torch.bincount(torch.tensor([to_model[y] for y in images.labels]), minlength=len(t.source.classes)).float()
    return total_variation(counts / counts.sum(), source_prior(t))


def source_prior(t: Training) -> torch.Tensor:
    """The source's class frequencies."""
    counts = torch.bincount(torch.tensor(t.source.labels), minlength=len(t.source.classes)).float()
    return counts / counts.sum()


def drawn_prior(t: Training) -> torch.Tensor:
    """The class prior the source batches are drawn with: uniform under --balance-source."""
    prior = source_prior(t)
    return torch.full_like(prior, 1 / len(prior)) if t.cfg.balance_source else prior


def trained_prior(t: Training, state: LoopState) -> torch.Tensor:
    """The class prior the classifier's posteriors are calibrated to: the drawn prior, times the
    class weights of --label-shift-weights once there are any. (EM under the drawn prior alone
    would read the weights' own bias toward a class as more of that class in the target, and
    re-weight further: a loop that collapses the model onto a few classes.)"""
    prior = drawn_prior(t)
    if t.cfg.label_shift_weights and state.class_weights:
        prior = prior * torch.tensor(state.class_weights)
    return prior / prior.sum()


def estimate_target(t: Training, state: LoopState, step: int) -> None:
    """--balance-target, --label-shift-weights: pseudo-labels of every target training image and
    the class prior they imply, from the current model in eval mode. Rank 0 computes them
    and sends them to the others: each rank's BatchNorm statistics are its own, so their
    predictions would differ.

    The prior the weights come from is IWDAN's: BBSE on soft predictions, smoothed over refreshes.
    EM needs calibrated posteriors, and a young model's are not: its estimates swung to 0 for
    classes the target holds 17 % of, and the weights that followed trained those classes out of
    the model. For --balance-target alone the prior is only logged: EM, with no source pass, so
    the runs measured with it draw the same random numbers."""
    pseudo_labels = torch.zeros(len(t.target), dtype=torch.long)
    target_prior = torch.zeros(len(t.source.classes))
    if t.dist.main:
        was_training = t.model.training
        t.model.eval()
        try:
            probs = role_outputs(t, "target", t.target)[0].float().softmax(1)
            if t.cfg.label_shift_weights:
                source_probs, source_labels = _labeled_source_probs(t)
                previous = torch.tensor(state.target_estimate["target_prior"]) if state.target_estimate else source_prior(t)
                target_prior = moving_average(previous, bbse_prior(source_probs, source_labels, probs))
            else:
                target_prior = em_prior(probs, trained_prior(t, state))
        finally:
            t.model.train(was_training)
        pseudo_labels = probs.argmax(1)
    pseudo_labels, target_prior = from_rank_0(t.dist, pseudo_labels), from_rank_0(t.dist, target_prior)
    state.pseudo_labels = pseudo_labels
    state.class_weights = [round(float(w), 6) for w in class_weights(target_prior, drawn_prior(t))]
    counts = torch.bincount(state.pseudo_labels, minlength=len(t.source.classes))
    state.target_estimate = {"iter": step, "target_prior": [round(float(v), 4) for v in target_prior],
                             "pseudo_label_counts": counts.tolist()}


def _labeled_source_probs(t: Training) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted probabilities and labels of the held-out source images, or of a fixed sample of the
    training source when none are held out (fitted, so its confusion is optimistic: IWDAN's choice)."""
    held_out = t.validation.source_val
    if held_out is not None:
        return role_outputs(t, "source_val", held_out)[0].float().softmax(1), torch.tensor(held_out.labels)
    indices = sample_indices(len(t.source), CONFUSION_IMAGES, t.cfg.seed, 4)
    logits = role_outputs(t, "source", t.source, indices)[0]
    return logits.float().softmax(1), torch.tensor(t.source.labels)[indices]


def wilson_lower_bound(accuracy: float, n: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval of a proportion measured on n trials."""
    if n <= 0:
        return 0.0
    centre = accuracy + z * z / (2 * n)
    spread = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def warn_on_label_shift(t: Training, state: LoopState, it: int, scores: dict[str, Any]) -> None:
    """Once per adversarial run: the share of the target the model predicts as each class is far
    from the share of the held-out source it predicts as each class (`predicted_shift`; from the
    source's class frequencies without a held-out split). Only from the second half of the run
    on: a young model's predictions collapse onto a few classes. And only when a difference as
    large is unlikely by chance (chi-square p < SHIFT_P_VALUE): a few held-out images read large
    differences out of noise. And only from a model that classifies the held-out source well
    enough to say anything about classes (the 95% lower bound of its accuracy halfway from chance
    to 1, so that a handful of held-out images cannot vouch for it): a model near chance
    puts the two domains on whichever classes it happens to, and its shares say nothing of the folders.

    The shares decide, not EM's estimate (`prior_shift`): EM sharpens the lean of uncalibrated
    posteriors, and read 0.21-0.39 on the balanced Office-31 runs (true shift 0.11)
    (benchmarks/RESULTS.md, issue 22). source-only is not warned: the harm warned of is
    alignment's, and source-only aligns nothing. With --eval-dir the measurement decides: labels
    that differ from the source's by SHIFT_WARNING or less turn the warning into an info line
    about the model's lean."""
    late = [e for e in state.evals if e["iter"] >= t.cfg.iters / 2]
    informed = (1 + 1 / len(t.source.classes)) / 2  # held-out source accuracy halfway from chance to 1
    held_out = len(t.validation.source_val or [])

    def shifted(e: dict[str, Any]) -> bool:
        # The accuracy's 95% lower bound, not the accuracy: 3 of 3 held-out images right says little.
        return ((e.get("predicted_shift") or 0) > SHIFT_WARNING and e.get("predicted_shift_p", 1.0) < SHIFT_P_VALUE
                and (e.get("src_acc") is None or wilson_lower_bound(e["src_acc"], held_out) >= informed))

    if not get_method(t.cfg.method).adversarial or it < t.cfg.iters / 2 or not shifted(scores) or any(shifted(e) for e in late[:-1]):
        return
    share, source = scores["predicted_share"], scores.get("source_predicted_share") or source_prior(t).tolist()
    order = sorted(range(len(share)), key=lambda i: -abs(share[i] - source[i]))[:3]
    leaning = ", ".join(f"{t.source.classes[i]!r} {share[i]:.0%} vs {source[i]:.0%}" for i in order)
    shift = eval_shift(t)
    if shift is not None and shift <= SHIFT_WARNING:
        # --eval-dir's labels are a measurement of the target's classes, and they contradict the
        # reading: what differs is the model's errors, not the folders.
        log.info("the model's target predictions lean on some classes (total variation %.2f from its held-out source "
                 "predictions: %s), while the labels of --eval-dir differ from the source's by %.2f: a lean of its errors, "
                 "not a label shift", scores["predicted_shift"], leaning, shift)
        return
    measured = f"; the labels of --eval-dir differ from the source's by {shift:.2f}" if shift is not None else ""
    source_imbalanced = imbalance_ratio(class_counts(t.source)) > IMBALANCE_WARNING
    log.warning("label shift: the model predicts the target's classes in other shares than the source's "
                "(total variation %.2f%s; share of the target predicted vs of the source: %s): "
                "adversarial alignment can then pull target images onto the wrong classes — %s",
                scores["predicted_shift"], measured, leaning,
                remedy_hint(remedy_flags(t.cfg), recommend=source_imbalanced))


def shift_scores(t: Training, state: LoopState, target_logits: torch.Tensor, val_logits: torch.Tensor | None) -> dict[str, Any]:
    """A snapshot's label-shift figures: the target's class distribution as its predictions imply
    it (EM), against the source's, and the shares of its predicted classes on the target against
    those on held-out source images (or the source's prior without them)."""
    scores: dict[str, Any] = {}
    target_prior = em_prior(target_logits.float().softmax(1), trained_prior(t, state))
    scores["prior_shift"] = round(total_variation(target_prior, source_prior(t)), 6)
    scores["target_prior"] = [round(float(v), 4) for v in target_prior]
    counts = predicted_counts(target_logits, len(target_prior))
    scores["predicted_share"] = [round(float(v), 4) for v in counts / counts.sum()]
    # Against the shares the same model predicts on held-out source images: a model that leans
    # toward a class leans so on both domains, and that lean is not a label shift.
    if val_logits is not None:
        reference = predicted_counts(val_logits, len(target_prior))
        scores["source_predicted_share"] = [round(float(v), 4) for v in reference / reference.sum()]
        scores["predicted_shift_p"] = shift_p_value(counts, reference)
    else:
        reference = source_prior(t)
        scores["source_predicted_share"] = None
        scores["predicted_shift_p"] = shift_p_value(counts, reference, reference_is_prior=True)
    scores["predicted_shift"] = round(total_variation(counts / counts.sum(), reference / reference.sum()), 6)
    return scores
