"""The names every option accepts, and the parse of a `--method` recipe, without PyTorch.

`golabels adapt` checks its options against these before torch and timm load (a second or more
on a CPU), so a misspelt value is refused as fast as a misspelt option. The modules that act on
a name (methods/, domain_labels.py, models.py) import their tuples from here (--select's values come
from validators.py's table), and
tests/test_architecture.py checks the registries against them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .validators import VALIDATORS  # torch-free until a validator runs

# Alignment terms in the order --help lists them (the baseline last), each with the discriminator
# of its reference code: --discriminator's default.
ALIGNMENT_TERMS = {"cdan-e": "batchnorm", "cdan": "batchnorm", "dann": "batchnorm", "dann-e": "batchnorm",
                   "gvb": "dropout", "asan": "dropout", "source-only": "batchnorm"}
BASELINE = "source-only"
# Losses on the target (methods/recipe.py), each the module that defines its `LOSS`: adding one is
# that module and its line here (methods/registry.py imports it when a recipe names it).
TARGET_LOSSES = {"mcc": "golabels_cli.methods.mcc", "bnm": "golabels_cli.methods.bnm", "im": "golabels_cli.methods.im",
                 "aad": "golabels_cli.methods.aad"}
TARGET_LOSS_NAMES = tuple(TARGET_LOSSES)  # as --help lists them

# --method auto: a recipe search on the frozen backbone's cached features (search.py). Its
# candidates by default, in the order they train: the adapted recipes golabels ships, then the
# floor; and how the shipped model is chosen from them without target labels (--search-pick):
# the candidates' heads averaged on the one backbone, or the candidate a validator scores best.
AUTO_METHOD = "auto"
SEARCH_RECIPES = ("cdan-e+bnm", "cdan-e+mcc", "mcc", "bnm", "source-only")
ENSEMBLE = "ensemble"
MAX_MEMBERS = 16  # heads of an ensemble (and of the student's teacher): a file claiming more is not one golabels wrote
# student: one new head taught by the ensemble (training/teacher.py), trained with this recipe;
# agreement: the candidate that agrees most with the ensemble's predictions on the target (EnsV).
STUDENT = "student"
STUDENT_RECIPE = "mcc"
AGREEMENT = "agreement"
SEARCH_PICKS = (ENSEMBLE, STUDENT, AGREEMENT, *(v.name for v in VALIDATORS if v.compute is not None))

DOMAIN_LABEL_MODES = ("fixed", "go", "soft", "zero-out")  # the default first, as --help lists them
DISCRIMINATORS = ("batchnorm", "dropout")
CDAN_MAPS = ("auto", "full", "randomized")
SCHEDULES = ("reference", "scaled")
REFERENCE_HORIZON = 10000  # iterations: the original CDAN code's max_iter for lambda
REFERENCE_LR_GAMMA = 1e-3  # TLlib's and the original code's lr * (1 + 0.001 i) ** -0.75
SELECT_CHOICES = ("last", *(v.name for v in VALIDATORS))  # --select: the last snapshot, or the best by a validator
FORWARDS = ("joint", "per-domain")
AUGMENTS = ("batched", "per-image")  # --augment: where training images are cropped (device_batches.py, data.py)
BN_STATS = ("train", "target")
CALIBRATIONS = ("source", "none")  # --calibrate: calibration.py
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda", "mps")
LR_SCALINGS = ("none", "linear", "sqrt")
LOGGERS = ("tensorboard", "mlflow")


@dataclass(frozen=True)
class RecipeName:
    """A `--method` value as names: its one spelling (the alignment term first), the alignment
    term (the baseline when none is named) and the losses on the target's predictions."""

    name: str
    alignment: str
    target_losses: tuple[str, ...] = ()

    @property
    def adversarial(self) -> bool:
        return self.alignment != BASELINE

    @property
    def uses_target(self) -> bool:
        """The run draws target batches: for the discriminator, the target losses or both."""
        return self.adversarial or bool(self.target_losses)


def recipe_parts() -> tuple[str, ...]:
    """Every name a `--method` value may join with "+": the alignment terms, then the target losses."""
    return (*ALIGNMENT_TERMS, *TARGET_LOSSES)


def parse_search_recipes(text: str) -> tuple[str, ...]:
    """--search-recipes' value (recipes joined by ","), each in its one spelling; ValueError saying
    what is wrong (a bad recipe, one named twice, fewer than two)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an empty --search-recipes")
    names = [p.strip() for p in text.split(",")]
    if AUTO_METHOD in names:
        raise ValueError("--search-recipes lists recipes, and auto is the search itself")
    parsed = [parse_recipe_name(n) for n in names]
    recipes = tuple(p.name for p in parsed)
    if len(set(recipes)) != len(recipes):
        raise ValueError(f"--search-recipes names {next(r for r in recipes if recipes.count(r) > 1)!r} twice")
    same = {}  # one recipe whatever the order of its losses: bnm+mcc and mcc+bnm train the same sum
    for p in parsed:
        key = (p.alignment, frozenset(p.target_losses))
        if key in same:
            raise ValueError(f"--search-recipes names one recipe twice, as {same[key]!r} and {p.name!r}")
        same[key] = p.name
    if len(recipes) < 2:
        raise ValueError("--search-recipes needs two recipes at least: a search of one is --method " + recipes[0])
    return recipes


def parse_recipe_name(name: str) -> RecipeName:
    """The recipe a `--method` value names; ValueError saying what is wrong with it (an unknown
    part, two alignment terms, a part twice, the baseline combined with a loss)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("an empty --method")
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in recipe_parts()]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--method {name!r} names a part twice")
    aligned = [p for p in parts if p in ALIGNMENT_TERMS]
    if len(aligned) > 1:
        raise ValueError(f"--method {name!r} names two alignment terms ({aligned[0]} and {aligned[1]}); a recipe has at most one")
    if BASELINE in aligned and len(parts) > 1:
        raise ValueError(f"{BASELINE} trains on no target image, so no loss on the target's predictions can join it")
    losses = tuple(p for p in parts if p in TARGET_LOSSES)
    return RecipeName("+".join([*aligned, *losses]), aligned[0] if aligned else BASELINE, losses)
