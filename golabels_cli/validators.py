"""Which snapshot to ship when the target has no labels: unsupervised validators.

Each validator scores a snapshot of the classifier from what it outputs on held-out source images
(labels known) and on target images (labels unknown):

    src-acc   accuracy on the held-out source split (--val-split)              higher is better
    entropy   mean entropy of the target predictions, H(p) = -sum p log p      lower is better
    im        information maximization: H(mean_x p(x)) - mean_x H(p(x));
              diverse (all classes used) and confident target predictions     higher is better
    snd       soft neighborhood density (Saito et al., ICCV 2021): the mean entropy of each target
              sample's softmax over its cosine similarities to the other target samples,
              computed on the softmax outputs with temperature 0.05            higher is better
    dev       deep embedded validation (You et al., ICML 2019): the source validation loss
              weighted by density ratios w(x) = p_target(x) / p_source(x) from a domain classifier
              on the features, with the control variate  eta = -Cov(w l, w) / Var(w):
              DEV = mean(w l) + eta * mean(w) - eta                             lower is better
    target-acc  accuracy on --eval-dir: the oracle, which needs target labels  higher is better

`better(name, a, b)` and `oriented(name, v)` turn every one of them into "higher is better".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where a validator runs: console and tables read the table below without it
    import torch

SND_TEMPERATURE = 0.05


def metric_key(select: str) -> str:
    """`--select` spelling to metrics key: src-acc -> src_acc."""
    return select.replace("-", "_")


def oriented(name: str, value: float) -> float:
    """The value with "higher is better"."""
    return value if DIRECTION[name] else -value


def better(name: str, new: float | None, old: float | None) -> bool:
    if new is None or not math.isfinite(new):
        return False
    return old is None or oriented(name, new) > oriented(name, old)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def mean_entropy(probs: torch.Tensor) -> float:
    from .entropy import entropy

    return float(entropy(probs).mean())


def information_maximization(probs: torch.Tensor) -> float:
    from .entropy import entropy

    return float(entropy(probs.mean(0)) - entropy(probs).mean())


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Higher when target samples form dense neighbourhoods (clusters) rather than being spread out."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from .entropy import entropy

    if len(probs) < 2:
        return float("nan")
    z = F.normalize(probs.double(), dim=1)
    total = 0.0
    for start in range(0, len(z), 1024):  # rows in chunks: N x N at once would not fit for large N
        sim = z[start:start + 1024] @ z.T / temperature
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -math.inf  # a sample is not its own neighbour
        total += float(entropy(sim.softmax(1)).sum())
    return total / len(z)


def domain_density_ratio(source: torch.Tensor, target: torch.Tensor, query: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """w(x) = p_target(x) / p_source(x) at each row of `query`, from an L2-regularized logistic
    regression separating `source` from `target` features (standardized; balanced by weighting)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    x = torch.cat([source, target]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-3)  # a feature dead on these samples must not explode elsewhere
    x = (x - mean) / std
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).double()
    weight = torch.where(y == 1, len(x) / (2.0 * len(target)), len(x) / (2.0 * len(source)))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weight).mean() + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        logit = ((query.double() - mean) / std) @ w + b
    return logit.clamp(-30, 30).exp()  # balanced classes: odds = density ratio (float64)


def deep_embedded_validation(weights: torch.Tensor, losses: torch.Tensor) -> float:
    """DEV risk from density ratios and per-sample validation losses; lower is better."""
    import torch

    weights, losses = weights.double(), losses.double()
    weighted = weights * losses
    var = weights.var()
    eta = -torch.cov(torch.stack([weighted, weights]))[0, 1] / var if var > 0 else torch.zeros((), dtype=torch.float64)
    return float(weighted.mean() + eta * weights.mean() - eta)


@dataclass
class Outputs:
    """A snapshot's outputs on the validation images."""

    val_logits: torch.Tensor | None  # held-out source: [Nv, C]
    val_labels: torch.Tensor | None
    val_features: torch.Tensor | None  # bottleneck features
    train_features: torch.Tensor | None  # a sample of the source training images, for DEV's domain classifier
    target_logits: torch.Tensor  # [Nt, C]
    target_features: torch.Tensor


def _src_acc(out: Outputs, probs: torch.Tensor) -> float | None:
    return accuracy(out.val_logits, out.val_labels) if out.val_logits is not None and len(out.val_logits) else None


def _dev(out: Outputs, probs: torch.Tensor) -> float | None:
    import torch.nn.functional as F  # noqa: N812

    if out.val_logits is None or out.train_features is None or len(out.val_logits) < 2:
        return None
    ratio = domain_density_ratio(out.train_features, out.target_features, out.val_features)
    return deep_embedded_validation(ratio, F.cross_entropy(out.val_logits.float(), out.val_labels, reduction="none"))


@dataclass(frozen=True)
class Validator:
    key: str  # in metrics.jsonl, summary.json and --logger's tags
    name: str  # --select's spelling, and the name tables, logs and plots show
    higher_is_better: bool
    compute: Callable[[Outputs, "torch.Tensor"], float | None] | None  # (outputs, target probabilities); None: the oracle
    telling: int  # how telling it measured (docs/selection.md): a narrow table leaves out the least telling first
    held_out_source: bool = False  # reads the held-out source split (--val-split): --select by it needs one


# Every validator, once: --select's values, the tables, the logs, the plots and the trackers' tags
# are derived from this table. target-acc is the oracle: the loop scores it from --eval-dir's labels.
VALIDATORS = (
    Validator("src_acc", "src-acc", True, _src_acc, 3, held_out_source=True),
    Validator("entropy", "entropy", False, lambda out, probs: mean_entropy(probs), 1),
    Validator("im", "im", True, lambda out, probs: information_maximization(probs), 2),
    Validator("snd", "snd", True, lambda out, probs: soft_neighborhood_density(probs), 4),
    Validator("dev", "dev", False, _dev, 0, held_out_source=True),
    Validator("target_acc", "target-acc", True, None, 5),
)
LABEL_FREE = tuple(v.key for v in VALIDATORS if v.compute is not None)  # what an evaluation computes without target labels
NAMES = {v.key: v.name for v in VALIDATORS}  # metrics key -> --select spelling
DIRECTION = {v.key: v.higher_is_better for v in VALIDATORS}  # metrics key -> True when higher is better
NEED_HELD_OUT_SOURCE = tuple(v.name for v in VALIDATORS if v.held_out_source)  # --select values that need --val-split above 0
LEAST_TELLING_FIRST = tuple(v.name for v in sorted(VALIDATORS, key=lambda v: v.telling) if v.compute is not None)


def is_evaluation_row(row: dict) -> bool:
    """Whether a metrics row is one at an evaluated snapshot: only those hold validators (a run
    written before a validator existed holds the others)."""
    return any(key in row for key in LABEL_FREE)


def shipped_evaluation(summary: dict) -> dict:
    """A finished run's evaluation of the snapshot it ships (summary.json's `evals` entry at its
    `selected` iteration: --select's, else the last); {} when it has none."""
    evals = [e for e in summary.get("evals") or [] if isinstance(e, dict)]
    shipped = (summary.get("selected") or {}).get("iter")
    return next((e for e in evals if e.get("iter") == shipped), evals[-1] if evals else {})


def compute_validators(out: Outputs) -> dict[str, float | None]:
    """Every label-free validator that the outputs allow (src-acc and dev need a held-out source split)."""
    probs = out.target_logits.float().softmax(1)
    values = {v.key: v.compute(out, probs) for v in VALIDATORS if v.compute is not None}
    return {k: (None if v is None or not math.isfinite(v) else round(v, 6)) for k, v in values.items()}
