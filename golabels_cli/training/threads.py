"""How many CPU threads a run's training steps use (--threads).

A step on cached features (--freeze-backbone) is a few small matrix products. On 2 cores it ran
1.4x faster on two threads than on one when the machine was idle, and 1.2x slower when another
process kept both cores busy; on a shared machine a user measured it 2.4-4.8x slower on torch's
default (one thread per core) than on one thread. No fixed count suits every machine and load, so
the frozen path measures: copies of the bottleneck, head and discriminator take forward and
backward passes over a step's worth of rows at 1, 2, 4, ... threads, in interleaved rounds, and
the fewest threads within TIE of the fastest win. A backbone that trains is measured the same way,
the whole classifier on random images at the run's input size, once per count when a step is slow:
its large convolutions often use every core well (tf_efficientnet_lite0 fine-tuning on 2 idle
cores: 1.7x one thread's speed), but the demo's small network on a loaded machine ran 5x faster on
one thread than on torch's default (benchmarks/RESULTS.md, issue 55).

The probe draws from its own generator and trains copies, so it leaves the run as it was; the
weights depend on the number it chooses, which config.yaml records: a resume or a replay uses
that number and measures nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from typing import Iterator

import torch

from ..config import AdaptConfig
from ..models import input_width
from ..errors import plural

log = logging.getLogger("golabels")

TIE = 1.05  # a count within 5 % of the fastest is as fast: the fewer threads leave the cores to others
ROUNDS = 3  # each count measured in every round, the best round kept: a burst of other work hits one round
ROUND_SECONDS = 0.03  # the time each count is measured for in a round
SLOW_STEP = 0.5  # seconds: a step slower than this is measured once per count (a backbone that trains on a CPU)


def resolve_threads(cfg: AdaptConfig, device: torch.device, trained: torch.nn.Module, disc: torch.nn.Module | None,
                    input_shape: tuple[int, ...]) -> int:
    """--threads as the run will record it: the number given; or on a CPU the measured count (of
    `trained`, the modules a step trains: the bottleneck and head on the frozen path, the whole
    classifier when the backbone trains, on inputs of `input_shape`); or 0, torch's default (an
    accelerator, or OMP_NUM_THREADS set: the user's own choice for the machine)."""
    known = threads_without_measuring(cfg, device)
    if known is not None:
        return known
    timings = measure(trained, disc, 2 * cfg.batch_size, input_shape, candidates(torch.get_num_threads()))
    chosen = fastest(timings)
    log.info("threads: %d for the training steps (%s; --threads N sets it)", chosen,  # a step each; the fewest within TIE of the fastest
             ", ".join(f"{plural(n, 'thread')} {seconds * 1e3:.2f} ms" for n, seconds in sorted(timings.items())))
    return chosen


def threads_without_measuring(cfg: AdaptConfig, device: torch.device) -> int | None:
    """--threads when no measurement decides it (what --print-config shows); None when one does."""
    if cfg.threads is not None:
        return cfg.threads
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() < 2:
        return 0
    return None


def candidates(most: int) -> list[int]:
    """1, 2, 4, ... up to `most`, and `most` itself."""
    counts, n = [], 1
    while n < most:
        counts.append(n)
        n *= 2
    return counts + [most]


def fastest(timings: dict[int, float]) -> int:
    """The fewest threads whose step time is within TIE of the fastest."""
    best = min(timings.values())
    return min(n for n, seconds in timings.items() if seconds <= best * TIE)


def measure(head: torch.nn.Module, disc: torch.nn.Module | None, rows: int, input_shape: tuple[int, ...] | int,
            counts: list[int]) -> dict[int, float]:
    """Seconds of one forward and backward pass of copies of `head` and `disc` over `rows` random
    inputs of `input_shape` (features, or images), per thread count: the best of ROUNDS
    interleaved rounds; one round, of one pass per count, when a pass takes longer than SLOW_STEP
    (a backbone on a CPU: the probe then costs a few of the run's own steps)."""
    head = copy.deepcopy(head).train()
    disc = copy.deepcopy(disc).train() if disc is not None else None
    generator = torch.Generator().manual_seed(0)
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    x = torch.randn(rows, *shape, generator=generator)
    z = torch.randn(rows, input_width(disc), generator=generator) if disc is not None else None
    params = [p for m in (head, disc) if m is not None for p in m.parameters()]

    def step() -> None:
        for p in params:
            p.grad = None
        logits = head(x)
        loss = (logits[0] if isinstance(logits, tuple) else logits).float().logsumexp(1).mean()
        if disc is not None:
            out = disc(z)
            loss = loss + (out[0] if isinstance(out, tuple) else out).float().mean()
        loss.backward()

    with torch.random.fork_rng(devices=[]):  # a dropout layer or timm's drop path draws: not from the run's generator
        return _timed(step, counts)


def _timed(step, counts: list[int]) -> dict[int, float]:
    best = {n: float("inf") for n in counts}
    with step_threads(counts[-1]):
        started = time.perf_counter()
        step()  # the first pass allocates; not timed
        slow = time.perf_counter() - started > SLOW_STEP
    repeats = 1 if slow else 0
    for _ in range(1 if slow else ROUNDS):
        for n in counts:
            with step_threads(n):
                if not slow:
                    step()
                if not repeats:  # sized once, on the first count, so that every count runs the same work
                    started = time.perf_counter()
                    step()
                    repeats = max(2, min(50, round(ROUND_SECONDS / max(time.perf_counter() - started, 1e-6))))
                started = time.perf_counter()
                for _ in range(repeats):
                    step()
                best[n] = min(best[n], (time.perf_counter() - started) / repeats)
    return best


@contextlib.contextmanager
def step_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside (0 or None: left as they are), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def threads_used(threads: int | None) -> int:
    """The count the steps run on: --threads, or torch's default for 0."""
    return threads or torch.get_num_threads()

