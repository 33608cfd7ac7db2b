"""checkpoint.pt's inner state checked field by field before a resume changes anything: a
checkpoint is a file anyone can edit, and a wrong type found only once the loop runs (an RNG state
of the wrong size, evaluations that are not a list) used to fail after the run directory had
changed, or to train on and save the bad state again."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, reason
from .state import LoopState


def check_checkpoint_state(ckpt: dict[str, Any], path: Path) -> None:
    """InputError naming the first field of `ckpt` that a resume could not use."""
    _check_rng(ckpt.get("rng"), path)
    _check_loop(ckpt.get("loop"), path)
    for name in ("model", "discriminator", "multilinear", "selected_model", "target_bank"):
        state = ckpt.get(name, {})
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise _bad(path, name, "must map names to tensors")
    optimizer = ckpt.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list):
        raise _bad(path, "optimizer", "must hold the optimizer's state and its param_groups")
    state = optimizer.get("state")
    if not isinstance(state, dict) or not all(isinstance(v, dict) and all(isinstance(k, str) for k in v) for v in state.values()):
        raise _bad(path, "optimizer", "state must map each parameter to its buffers by name")


def check_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """After load_state_dict, which checks neither: each parameter's buffers (SGD's momentum) must
    be tensors of its shape, or the first step fails (a RuntimeError, exit 1, after the run had
    started again) or trains on someone else's momentum."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, buffer in optimizer.state.get(p, {}).items():
                if name == "step" or buffer is None:
                    continue
                if not isinstance(buffer, torch.Tensor) or buffer.shape != p.shape or not buffer.is_floating_point():
                    what = f"a {type(buffer).__name__}" if not isinstance(buffer, torch.Tensor) else f"of shape {tuple(buffer.shape)}"
                    raise _bad(path, "optimizer", f"buffer {name!r} is {what}, for a parameter of shape {tuple(p.shape)}")


def check_selected_model(selected: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    """--select's best snapshot so far must fit the model it will be loaded into at the end."""
    if not selected:
        return
    own = model.state_dict()
    if selected.keys() != own.keys() or any(selected[k].shape != own[k].shape for k in own):
        raise _bad(path, "selected_model", "does not fit the run's model")


def _bad(path: Path, field: str, why: str) -> InputError:
    return InputError(f"{path} is damaged: its {field} {why}", "start the run again (the run directory is unchanged)")


def _check_rng(rng: Any, path: Path) -> None:
    if not isinstance(rng, dict):
        raise _bad(path, "rng", "must be a mapping of generator states")
    try:  # each state set into a generator of its own: the real ones are untouched
        torch.Generator().set_state(rng["torch"])
        random.Random().setstate(_tuples(rng["python"]))
        n = rng["numpy"]
        keys = n["keys"].numpy().astype(np.uint32) if isinstance(n["keys"], torch.Tensor) else None
        np.random.RandomState().set_state(("MT19937", keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached"])))
        cuda = rng.get("cuda", [])
        if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda):
            raise TypeError("cuda: a list of byte tensors expected")
    except Exception as exc:  # noqa: BLE001 - whatever a generator says of a state it cannot take
        raise _bad(path, "rng", f"is not a set of generator states ({reason(exc, 100)})") from None


def _tuples(value: Any) -> Any:
    """random.setstate takes tuples; a checkpoint may hold lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# LoopState's fields, each with what a resume needs it to be.
LOOP_FIELDS = {
    "iteration": (_count, "a non-negative integer"),
    "sums": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items()),
             "a mapping of names to numbers"),
    "window": (_count, "a non-negative integer"),
    "last_row": (lambda v: isinstance(v, dict), "a mapping"),
    "evals": (lambda v: isinstance(v, list) and all(isinstance(e, dict) and _count(e.get("iter")) for e in v),
              "a list of evaluations, each with its iteration"),
    "selected": (lambda v: isinstance(v, dict), "a mapping"),
    "pseudo_labels": (lambda v: v is None or (isinstance(v, torch.Tensor) and v.dim() == 1 and not v.is_floating_point()),
                      "none or a list of class indices"),
    "class_weights": (lambda v: v is None or (isinstance(v, list) and all(_number(x) for x in v)), "none or a list of numbers"),
    "target_estimate": (lambda v: isinstance(v, dict), "a mapping"),
    "seconds": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "eval_seconds": (lambda v: _number(v) and v >= 0, "a non-negative number"),
}
# (selected_weights is saved beside the loop, as the checkpoint's selected_model)
assert set(LOOP_FIELDS) == set(LoopState.__dataclass_fields__) - {"selected_weights"}, "every LoopState field has its check"


def _check_loop(loop: Any, path: Path) -> None:
    if not isinstance(loop, dict):
        raise _bad(path, "loop state", "must be a mapping")
    unknown = sorted(set(loop) - set(LOOP_FIELDS), key=str)
    if unknown:
        raise _bad(path, "loop state", f"holds an unknown field {str(unknown[0])[:40]!r}")
    for name, value in loop.items():
        ok, what = LOOP_FIELDS[name]
        if not ok(value):
            raise _bad(path, f"loop state's {name}", f"must be {what}")
