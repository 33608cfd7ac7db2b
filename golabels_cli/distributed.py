"""Data-parallel adaptation on torch.distributed: DDP in the workers, torch's own launcher around them.

`golabels adapt ... --devices N` starts N local worker processes through torch.distributed.run
(the code behind `torchrun --standalone`); `torchrun --nnodes M --nproc-per-node N -m golabels_cli
adapt ...` starts them on several machines. Either way each worker finds RANK, WORLD_SIZE and
LOCAL_RANK in its environment and joins the process group: NCCL on CUDA, gloo on the CPU.

What each rank does (docs/scaling.md says why it matches the single-process method):
- draws its own, disjoint share of every source and target shuffle (data.InfiniteDraws);
- runs the classifier and the discriminator, wrapped in DistributedDataParallel, on its local
  batch of batch_size source + batch_size target images; Go-labels and the discriminator's loss
  use that local batch, and DDP averages the gradients over ranks before each optimizer step;
- all-reduces the logged metrics (means over ranks, sample counts summed);
- only rank 0 evaluates, shows progress and writes the run directory; checkpoints hold the
  unwrapped model, so a run saved on N processes resumes on M and exports unchanged.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import AlreadyReported, GolabelsError, InputError, Interrupted, RunError, reason
from . import run_files

# torch is imported where a collective runs, not here: `adapt` asks env_rank() and rank_error()
# before its options are checked, and a bad value is refused before torch loads.

if TYPE_CHECKING:
    import torch

log = logging.getLogger("golabels")

COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)  # rank 0 evaluates while the others wait
SHUTDOWN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # a gloo group for host-side flags (stop requests), whatever the backend

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def shared(exc: Exception) -> Exception:
    """Mark an error every rank meets alike (the same inputs, the same checks, an all-reduced
    divergence): rank 0 reports it, the others wait to be stopped (cli.adapt)."""
    exc.shared = True
    return exc


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def setup(device_type: str) -> Dist:
    """Join the process group when started by a launcher; a no-op otherwise (or for one process)."""
    import torch
    import torch.distributed as dist

    if not launched_by_torchrun():
        return SINGLE
    world = int(os.environ["WORLD_SIZE"])
    if world == 1:
        return SINGLE
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), _control_group())
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, _control_group())


def _control_group():
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if dist.get_backend() != "gloo" else dist.group.WORLD


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank if it is true on any: ranks must stop at the same step."""
    import torch
    import torch.distributed as dist

    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control)
    return bool(t.item())


def all_mean(d: Dist, values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if d.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= d.world
    return values


def all_min(d: Dist, values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if d.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def from_rank_0(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Rank 0's `values` (a CPU tensor of the same shape and dtype on every rank) on every rank."""
    import torch.distributed as dist

    if d.enabled:
        values = values.clone()
        dist.broadcast(values, src=0, group=d.control)
    return values


def lr_factor(rule: str, world: int) -> float:
    """--lr-scaling: how the learning rate follows the effective batch (world x --batch-size)."""
    return {"none": 1.0, "linear": float(world), "sqrt": world ** 0.5}[rule]


# ---- the launcher side --------------------------------------------------------------------------


def launch(nproc: int, worker_args: list[str], debug: bool = False) -> None:
    """Run `python -m golabels_cli WORKER_ARGS` in `nproc` local processes through
    torch.distributed.run (torchrun --standalone) and wait for them. A failing worker stops the
    whole job (torch's agent terminates the others): exit 1, or the failing rank 0's own exit code
    (2 bad input, 130 interrupted) when rank 0 failed first; each worker has printed its error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if not debug:  # the agent's own log lines (each sets its level): the workers' one-line errors say it all
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                                         "--monitor-interval=0.2", "-m", "golabels_cli", *worker_args])
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")}
    if saved["OMP_NUM_THREADS"] is None:  # torchrun would set 1 and warn; share the cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    if saved["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] is None:
        # After Ctrl-C the agent waits this long for the workers to save before it kills them
        # (torch's default is 30 s; a step, an evaluation and a save can take longer on a CPU).
        os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(SHUTDOWN_TIMEOUT_S)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {r: f.exitcode for r, f in exc.failures.items()}
        # Exits by signal or 130 follow from the agent stopping the job; the others are causes.
        causes = {r: c for r, c in codes.items() if c > 0 and c != 130}
        if not causes:
            if codes.get(0) == 130:  # rank 0 said where the state is saved
                raise AlreadyReported(130) from None
            raise Interrupted("the job was stopped before rank 0 could save", "resume from the last checkpoint, if any") from None
        if causes.get(0) == 2 and set(causes.values()) == {2}:  # bad input, said once by rank 0
            raise AlreadyReported(2) from None
        failed = sorted((r, f) for r, f in exc.failures.items() if r in causes)
        hows = [f"rank {r} " + (f"killed by signal {-f.exitcode}" if f.exitcode < 0 else f"exit code {f.exitcode}") for r, f in failed]
        raise RunError(f"{len(failed)} of {nproc} worker processes failed ({', '.join(hows)}; their errors are above) and the job was "
                       "stopped", "fix the cause, then resume from the last checkpoint or start again") from None
    except Exception as exc:
        if type(exc).__name__ == "SignalException":
            # Ctrl-C or SIGTERM reached the launcher: torch's agent passed it on to the workers and
            # waited for them; rank 0 has said where the state is saved.
            raise AlreadyReported(130) from None
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
        for s, h in handlers.items():
            signal.signal(s, h)


def check_devices(devices: int, device: str) -> None:
    import torch

    if not isinstance(devices, int) or devices < 1:
        raise InputError(f"--devices must be a positive integer, got {devices!r}")
    if launched_by_torchrun() and devices not in (1, int(os.environ.get("LOCAL_WORLD_SIZE", devices))):
        raise InputError(f"--devices {devices} under torchrun, which started {os.environ.get('LOCAL_WORLD_SIZE')} processes here",
                         "leave --devices out when starting golabels with torchrun")
    if devices > 1 and device in ("cuda", "auto") and torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise InputError(f"--devices {devices} but only {torch.cuda.device_count()} CUDA GPUs are visible", "pass --devices "
                                                                                                            f"{torch.cuda.device_count()} "
                                                                                                            "or less")
    if devices > 1 and device == "mps":
        raise InputError("--devices above 1 is not supported on Apple MPS", "use --device cpu or cuda")


def option_flags(options: dict) -> list[str]:
    """{option: value} as command-line flags: a true bool as its flag, a false one left out."""
    flags: list[str] = []
    for k, v in options.items():
        if isinstance(v, bool):
            flags += [f"--{k.replace('_', '-')}"] if v else []
        elif v is not None:
            flags += [f"--{k.replace('_', '-')}", str(v)]
    return flags


def launch_new_run(config_yaml: str, devices: int, out: str | None, exist_ok: bool, output_flags: list[str], debug: bool) -> None:
    """--devices N: the workers replay the resolved config (so they agree on every value), from a
    temporary file that outlives them only until they have all read it."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="golabels-launch-") as tmp:
        config = Path(tmp) / run_files.CONFIG
        config.write_text(config_yaml)
        args = ["adapt", "--config", str(config)]
        if out:
            args += ["--out", str(Path(out).absolute())]
        if exist_ok:
            args.append("--exist-ok")
        launch(devices, args + output_flags, debug)


# How long a rank other than 0 waits after an error every rank meets alike, for rank 0 to report
# it and torch's agent to stop the job; still alive after it, the error was this rank's alone.
SHARED_ERROR_WAIT_S = 20


def rank_error(exc: Exception, rank: int) -> Exception:
    """The error a process of the job reports for `exc` (itself where nothing changes). Rank 0
    reports bad input, divergence (all-reduced) and interruptions, which are the same on every
    rank; a rank's own crash is named with its rank."""
    if rank > 0:
        if isinstance(exc, Interrupted):
            return AlreadyReported(exc.exit_code)
        if getattr(exc, "shared", False):
            time.sleep(SHARED_ERROR_WAIT_S)
        return _on_rank(exc, rank)
    if launched_by_torchrun() and not isinstance(exc, (InputError, Interrupted)):
        return _on_rank(exc, rank)
    return exc


def _on_rank(exc: Exception, rank: int) -> Exception:
    if isinstance(exc, GolabelsError):
        exc.message = f"[rank {rank}] {exc.message}"
        return exc
    return RunError(f"[rank {rank}] {type(exc).__name__}: {reason(exc)}", "rerun with --debug for the traceback")
