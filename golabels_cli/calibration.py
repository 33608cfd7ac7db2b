"""Confidence that means something: temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017) fitted without target labels, and the calibration error it is judged by.

    p = softmax(z / T),   T = argmin_T  -1/n sum_i log softmax(z_i / T)[y_i]   on the held-out source

One number divides the shipped model's logits: its predictions (the argmax) do not change, its
confidences do. T is at least 1: calibration only softens. A held-out source split the model gets
(nearly) all right asks for T < 1, confidences sharper still, and on a shifted target that is the
wrong way: webcam → amazon's fits went to 0.05-0.71 and raised the target's ECE from 15.9 % to 21.1 %
(5 seeds; benchmarks/RESULTS.md, "Calibration"). Target-loss recipes (MCC, BNM, IM) push the
target's predictions towards one-hot, so an adapted head says 1.00 on images it gets wrong; the held-out source split, which no step
trained on, tells how far its confidences overshoot. It is source data, not target: under a domain
shift the target's calibration can differ, which is why `golabels eval` measures it on labeled
target images (ECE, before and after) and benchmarks/RESULTS.md reports what it did on real shifts.

    ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|,  15 equal-width confidence bins
"""

from __future__ import annotations

import math

import torch

# T is searched in model_info's [MIN_TEMPERATURE, MAX_TEMPERATURE]: a bound keeps a held-out split
# the model gets all right (whose NLL falls for ever as T shrinks) from shipping confidences of 1.
from .model_info import MAX_TEMPERATURE, MIN_TEMPERATURE

# Fewer held-out images than this say too little of the confidences to fit T on (3 right answers
# would send it to its lower bound): the model then ships uncalibrated, and says so.
MIN_CALIBRATION_IMAGES = 30
SOFTEN_ONLY = 1.0  # the lowest temperature a run ships
ECE_BINS = 15
_SEARCH_STEPS = 60  # golden-section steps on log T: the bracket shrinks 0.618^60, far below float precision of T


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, lowest: float = SOFTEN_ONLY) -> float:
    """The temperature in [lowest, MAX_TEMPERATURE] minimizing the NLL of `labels` ([N] class
    indices) under `logits` ([N, C]).

    The NLL is convex in 1/T, so it has one minimum along log T: a golden-section search finds it
    (or the bound nearest to it), deterministically, with no learning rate to tune."""
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one labeled row")
    if not MIN_TEMPERATURE <= lowest < MAX_TEMPERATURE:
        raise ValueError(f"lowest must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE})")
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    lo, hi = math.log(lowest), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(_SEARCH_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(z, y, math.exp(b))
    return round(math.exp((lo + hi) / 2), 4)  # four digits: the same value in metadata, summary and ONNX


def expected_calibration_error(probabilities: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of top-1 confidences `probabilities` ([N] or [N, C]: the row maxima are taken) against
    `correct` ([N] booleans: the top-1 prediction was right)."""
    confidence = probabilities.max(1).values if probabilities.dim() == 2 else probabilities
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    if len(confidence) == 0:
        return 0.0
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 joins the first bin.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    gap = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, confidence - correct)
    return float(gap.abs().sum() / len(confidence))
