"""How long a search has left, from the candidates it has trained: the estimate each candidate's
start line gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..choices import parse_recipe_name

# A kind not yet seen: a step on cached features without a discriminator took a quarter of one
# with CDAN+E's (benchmarks/RESULTS.md, figure (k): 3.12 against 13.22 ms).
NO_DISCRIMINATOR_SHARE = 0.25


@dataclass
class Pace:
    step: dict[bool, float] = field(default_factory=dict)  # seconds per iteration, with a discriminator and without
    # The fewest seconds a candidate spent outside its steps (reading its folders, evaluating,
    # calibrating, writing): the first one's also fill the feature cache, which the others read.
    overhead: float | None = None

    def add(self, adversarial: bool, summary: dict[str, Any], wall_seconds: float | None) -> None:
        """A finished candidate's pace; `wall_seconds` when this process trained it from its start."""
        if not summary.get("seconds") or summary.get("resumed_at"):
            return
        self.step[adversarial] = summary["seconds"] / max(summary["iters"], 1)
        if wall_seconds is not None:
            outside = max(wall_seconds - summary["seconds"], 0.0)
            self.overhead = outside if self.overhead is None else min(self.overhead, outside)

    def seconds_left(self, recipes: tuple[str, ...], iters: int) -> float | None:
        """The time `recipes` will take at this pace; None before a candidate has finished."""
        if not self.step:
            return None
        guess = {True: self.step.get(True, self.step.get(False, 0.0) / NO_DISCRIMINATOR_SHARE),
                 False: self.step.get(False, self.step.get(True, 0.0) * NO_DISCRIMINATOR_SHARE)}
        return sum(guess[parse_recipe_name(r).adversarial] * iters + (self.overhead or 0.0) for r in recipes)
