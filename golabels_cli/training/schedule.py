"""The run's schedule, one object: the learning rate and the gradient-reversal coefficient at each
step (as timm's schedulers, `step_update(optimizer, step)`).

    lr(i)     = lr x scale x (1 + gamma x i)^-decay           every parameter group at its own
                                                               initial rate x the same factor
    lambda(i) = 2 / (1 + exp(-alpha x i / horizon)) - 1        (methods/adversarial.py's grl_coeff)

gamma and the horizon come from the config (`--schedule`, `--lr-gamma`: options.py's
resolved_lr_gamma and grl_horizon); the head start (`--head-start`) decays on its own length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import AdaptConfig
from ..methods import grl_coeff

HEAD_START_DECAY = 20.0  # the head start's gamma x its length: its rate ends where a scaled run's does


@dataclass(frozen=True)
class Schedule:
    lr: float  # the new layers' rate at step 0 (the backbone's is a fraction of it, in its parameter group)
    gamma: float
    decay: float
    horizon: int = 1  # the step at which the reversal coefficient reaches 0.99 (with alpha 10)
    alpha: float = 10.0

    @classmethod
    def of(cls, cfg: AdaptConfig, scale: float = 1.0) -> "Schedule":
        """A run's schedule; `scale`: the learning-rate scaling of several processes (--lr-scaling)."""
        return cls(cfg.lr * scale, cfg.resolved_lr_gamma(), cfg.lr_decay, cfg.grl_horizon(), cfg.grl_alpha)

    @classmethod
    def head_start(cls, cfg: AdaptConfig) -> "Schedule":
        """--head-start's: --lr decayed over its own cfg.head_start steps."""
        return cls(cfg.lr, HEAD_START_DECAY / cfg.head_start, cfg.lr_decay)

    def factor(self, step: int) -> float:
        return (1.0 + self.gamma * step) ** (-self.decay)

    def coeff(self, step: int) -> float:
        """The gradient-reversal coefficient lambda at `step`."""
        return grl_coeff(step, self.horizon, self.alpha)

    def step_update(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Every parameter group's rate at `step` (its `initial_lr` x the factor); returns the new layers' rate."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.lr * factor
