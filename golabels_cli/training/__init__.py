"""Training a run: build it from its config, run the loop, write the run directory.

    search.py         adapt() and resume(): a run, or with --method auto a search over recipes
    run.py            one run: adapt() starts it, resume() continues it
    resolve.py        the config resolved once: device, folders, the defaults that follow them, every input checked
    build.py          model, discriminator, optimizer, feature cache, from the resolved config
    loop.py           the loop, top to bottom, and its window of metrics
    step.py           one optimizer step (forward, objective, backward); the learning rate; the head start
    selection.py      evaluating a snapshot (validators, --eval-dir, --bn-stats) and --select
    target_estimate.py  pseudo-labels and class prior of the target; a snapshot's label-shift figures and warning
    outputs.py        the model's outputs on the run's image sets
    run_dir.py        checkpoint, summary, metrics file, results files
    signals.py        Ctrl-C and SIGTERM: stop after the step in progress, or at once
    runtime.py        RNG states, speed settings, the environment
    state.py          Training (what a run is made of) and LoopState (where its loop is)
"""

from .build import build
from .resolve import resolve_config
from .loop import train
from .search import adapt, resume
from .runtime import Speed, environment, speed_settings
from .state import LoopState, Training
from .step import Step, fit_head, step_of

__all__ = ["LoopState", "Speed", "Step", "Training", "adapt", "build", "environment", "fit_head", "resolve_config", "resume",
           "speed_settings", "step_of", "train"]
