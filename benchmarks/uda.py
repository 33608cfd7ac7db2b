"""A sweep of golabels adapt over tasks x methods x domain labels x seeds, resumable, as a table.

Every cell is one `golabels adapt SRC TGT --eval-dir TGT` run (the target's labels reach the
evaluation only), kept in OUT/<src>-<tgt>/<method>[-<labels>]/seed<k>. A cell whose run has a
summary.json is done and never run again; a half-done one continues from its checkpoint. The
table (target top-1, mean ± std over seeds, the Go-labels gain per method, wall time) is printed
and written to OUT/results.md. The same command started twice (say, once per GPU with
CUDA_VISIBLE_DEVICES) shares the cells: each sweep skips the cells the other is running and
comes back to them at the end.

--remedies adds, for every adversarial method, one row per remedy of issue 10 (adapt's boolean
options, several joined by +), run with the last --domain-labels mode (go by default) and kept in
OUT/<src>-<tgt>/<method>-<labels>+<remedy>/seed<k>; the table then also gives each row's gain over
source-only:

    python benchmarks/uda.py ... --remedies balance-source,balance-source+balance-target,balance-source+label-shift-weights

    python benchmarks/uda.py --root /tmp/golabels-data --tasks amazon:webcam,webcam:amazon \\
        --methods source-only,dann,cdan-e --domain-labels fixed,go --seeds 3 \\
        --backbone tf_efficientnet_lite0 --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors \\
        --freeze-backbone --iters 2000 --out benchmarks/runs/office31
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import dataclasses
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import golabels  # noqa: E402
from golabels import InputError  # noqa: E402
from golabels.hooks import LABEL_FREE as VALIDATOR_KEYS  # noqa: E402
from golabels.hooks import REMEDIES as ADAPT_REMEDIES  # noqa: E402
from golabels.hooks import correlations, oriented, parse_method, setup_logging, spearman  # noqa: E402

FIELDS = {f.name for f in dataclasses.fields(golabels.AdaptConfig)}


@dataclass
class Cell:
    source: str
    target: str
    method: str
    labels: str | None  # None for a recipe without a discriminator (source-only, mcc, ...)
    seed: int
    remedy: str = ""  # adapt options joined by "+", e.g. "balance-source+label-shift-weights"

    @property
    def task(self) -> str:
        return f"{self.source}:{self.target}"

    def run_dir(self, out: Path) -> Path:
        name = self.method if self.labels is None else f"{self.method}-{self.labels}"
        name += f"+{self.remedy}" if self.remedy else ""
        return out / f"{self.source}-{self.target}" / name / f"seed{self.seed}"


def cells(tasks: list[str], methods: list[str], labels: list[str], seeds: int, remedies: list[str] = ()) -> list[Cell]:
    """Seed by seed, so that a sweep stopped early has every row with the same seeds."""
    out = []
    for seed in range(seeds):
        for task in tasks:
            source, target = task.split(":")
            for method in methods:
                out += [Cell(source, target, method, mode, seed) for mode in ([None] if unlabeled(method) else labels)]
                if not unlabeled(method):
                    out += [Cell(source, target, method, labels[-1], seed, remedy) for remedy in remedies]
    return out


def unlabeled(method: str) -> bool:
    """A recipe with no discriminator: --domain-labels does nothing in it, so it is one cell per seed."""
    try:
        return not parse_method(method).adversarial
    except ValueError:
        raise SystemExit(f"uda.py: unknown --methods entry {method!r}") from None


REMEDIES = tuple(k.replace("_", "-") for k in ADAPT_REMEDIES)  # adapt's options of issue 10


def remedy_options(remedy: str) -> dict:
    """{"balance_source": True, "balance_target": False, ...} of a remedy such as
    "balance-source+label-shift-weights": every remedy given, on or off, so that a row without one
    runs without one whatever adapt's defaults are."""
    options = {flag.replace("-", "_"): False for flag in REMEDIES}
    for flag in filter(None, remedy.split("+")):
        if flag not in REMEDIES:
            raise SystemExit(f"uda.py: unknown remedy {flag!r}: a remedy is one of {', '.join(REMEDIES)}, several joined by +")
        options[flag.replace("-", "_")] = True
    return options


def set_option(item: str) -> tuple[str, object]:
    """("trade_off", 2.0) of "trade-off=2": the value read as YAML reads it in config.yaml."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"uda.py: --set takes OPTION=VALUE, got {item!r}")
    name = name.strip().replace("-", "_")
    if name not in FIELDS:
        raise SystemExit(f"uda.py: --set {item!r}: adapt has no option --{name.replace('_', '-')}")
    return name, yaml.safe_load(value)


def cell_config(cell: Cell, root: Path, options: dict):
    return golabels.config(**{
        **options, "source": str(root / cell.source), "target": str(root / cell.target), "eval_dir": str(root / cell.target),
        "method": cell.method, "domain_labels": cell.labels or "fixed", "seed": cell.seed, **remedy_options(cell.remedy),
    })


def finished(run_dir: Path) -> dict | None:
    """The summary of a cell whose run has finished, else None."""
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def run_cell(cell: Cell, root: Path, out: Path, options: dict, wait: bool = True) -> dict | None:
    """The cell's summary: read if done, else continued from its checkpoint, else run (run_locked)."""
    return run_locked(cell.run_dir(out), lambda: cell_config(cell, root, options), wait)


def run_locked(run_dir: Path, make_config, wait: bool = True) -> dict | None:
    """The summary of the run in `run_dir`: read if done, else continued from its checkpoint, else
    run with the config `make_config()` returns (called only then, under the lock).

    Sweeps may run side by side into one OUT (say, the same sweep once per GPU): a lock per cell
    keeps a sweep from deleting a folder another one is writing and running the cell a second
    time. A sweep that reaches a cell another one is running waits for it and reads its result,
    or with wait=False gets None at once, to do other cells first."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        if (done := finished(run_dir)) is not None:
            return done
        if (run_dir / "checkpoint.pt").is_file():
            return golabels.resume(run_dir).summary
        if run_dir.exists():
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: this sweep's own folder, nothing to keep
        return golabels.adapt(make_config(), out=run_dir).summary


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def table(results: dict[tuple, list[dict]], tasks: list[str], methods: list[str], labels: list[str], remedies: list[str] = ()) -> str:
    """Markdown: one row per task and method (and remedy), one column per domain-label mode, the
    go - fixed gain; with remedies, also the last mode's gain over source-only."""
    versus = bool(remedies) and "source-only" in methods
    header = ["task", "method", *labels, *(["go − fixed"] if {"go", "fixed"} <= set(labels) else []),
              *([f"{labels[-1]} − source-only"] if versus else []), "seeds", "wall"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def accuracies(task, method, mode, remedy=""):
        return [r["target_acc"] for r in results.get((task, method, mode, remedy), [])]

    for task in tasks:
        baseline = accuracies(task, "source-only", None)
        for method in methods:
            for remedy in [""] if unlabeled(method) else ["", *remedies]:
                modes = [None] if unlabeled(method) else labels if not remedy else [labels[-1]]
                accs = {m: accuracies(task, method, m, remedy) for m in modes}
                seconds = sum(r["seconds"] for m in modes for r in results.get((task, method, m, remedy), []))
                row = [task.replace(":", " → "), method + (f" + {remedy.replace('+', ' + ')}" if remedy else "")]
                if unlabeled(method):
                    row += [mean_std(accs[None])] * len(labels)
                else:
                    row += [mean_std(accs[m]) if m in accs else "—" for m in labels]
                if "go − fixed" in header:
                    if unlabeled(method) or not accs.get("go") or not accs.get("fixed"):
                        row.append("—")
                    else:
                        row.append(f"{100 * (statistics.mean(accs['go']) - statistics.mean(accs['fixed'])):+.2f}")
                if versus:
                    last = accs[None] if unlabeled(method) else accs[labels[-1]]
                    row.append(f"{100 * (statistics.mean(last) - statistics.mean(baseline)):+.2f}"
                               if last and baseline and method != "source-only" else "—")
                row += [str(max(len(v) for v in accs.values())), f"{seconds:.0f} s"]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def pick(evals: list[dict], key: str) -> dict | None:
    """The snapshot a validator selects (the first of equals, as --select does)."""
    best = None
    for e in evals:
        if e.get(key) is not None and (best is None or oriented(key, e[key]) > oriented(key, best[key])):
            best = e
    return best


def validator_table(results: dict[tuple, list[dict]], tasks: list[str]) -> str:
    """Markdown: how well each validator ranks the snapshots of the adapted runs by target accuracy
    (Spearman, per run then averaged, and pooled over every snapshot of every run), and the target
    accuracy of the snapshot it would select, beside the last snapshot's and the best one's."""
    keys = [*VALIDATOR_KEYS]
    header = ["task", "what", *[k.replace("_", "-") for k in keys], "last", "best (oracle)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for task in tasks:
        runs = [r["evals"] for (t, method, _, _), rs in results.items() if t == task and method != "source-only" for r in rs]
        runs = [e for e in runs if len(e) >= 3 and all(x.get("target_acc") is not None for x in e)]
        if not runs:
            continue
        per_run = {k: [c[k] for c in (correlations(e) for e in runs) if c[k] is not None] for k in keys}
        pooled = {}
        for k in keys:
            pairs = [(oriented(k, x[k]), x["target_acc"]) for e in runs for x in e if x.get(k) is not None]
            pooled[k] = spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else float("nan")
        chosen = {k: [pick(e, k)["target_acc"] for e in runs if pick(e, k)] for k in keys}
        last = [e[-1]["target_acc"] for e in runs]
        best = [max(x["target_acc"] for x in e) for e in runs]
        name = task.replace(":", " → ")
        lines.append("| " + " | ".join([name, f"Spearman, mean over {len(runs)} runs",
                                          *[f"{statistics.mean(per_run[k]):+.2f}" if per_run[k] else "—" for k in keys], "", ""]) + " |")
        lines.append("| " + " | ".join([name, "Spearman, all snapshots pooled", *[f"{pooled[k]:+.2f}" for k in keys], "", ""]) + " |")
        lines.append("| " + " | ".join([name, "target top-1 of the selected snapshot, mean",
                                          *[f"{100 * statistics.mean(chosen[k]):.2f}" if chosen[k] else "—" for k in keys],
                                          f"{100 * statistics.mean(last):.2f}", f"{100 * statistics.mean(best):.2f}"]) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def stop_after_the_cell():
    """SIGINT and SIGTERM stop the sweep after the running cell (golabels saves a cell's state on
    the first one, and finishes a cell that is writing its results); the list gets the signal's
    name. A second one stops at once. Handlers are set only in the main thread, and put back."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append("SIGINT" if signum == signal.SIGINT else "SIGTERM")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def done_cells(results: dict) -> int:
    return sum(map(len, results.values()))


def stop_sweep(signal_name: str, where: str) -> None:
    """One line on stderr saying how to go on, and exit 130 (interrupted, the state saved)."""
    print(f"uda.py: stopped by {signal_name} {where}; run the same command again to resume the sweep", file=sys.stderr, flush=True)
    raise SystemExit(130)


def sweep(todo: list[Cell], root: Path, out: Path, options: dict, table_only: bool, stop: list[str], results: dict):
    """(cell, summary) of each cell as it finishes: run, resumed or read; a cell another sweep is
    running comes last (side-by-side sweeps share the work). A signal stops the sweep after the
    running cell, with one line saying how to go on."""
    busy = []
    for wait, batch in ((False, todo), (True, busy)):
        for cell in batch:
            if stop:
                stop_sweep(stop[0], f"after {done_cells(results)} cells; no new cell started")
            try:
                summary = finished(cell.run_dir(out)) if table_only else run_cell(cell, root, out, options, wait=wait)
            except (golabels.Interrupted, KeyboardInterrupt) as exc:
                # golabels says what it kept: the state saved, or (before training began) nothing written
                kept = exc.message.split("; ", 1)[-1] if isinstance(exc, golabels.Interrupted) else "its newest checkpoint is kept"
                stop_sweep(stop[0] if stop else "SIGINT", f"during cell {cell.run_dir(out)}: {kept}")
            if summary is None:
                if not table_only:
                    busy.append(cell)
                continue
            yield cell, summary
    if stop:  # during the last cell's final writes: it finished, and the table follows
        print(f"uda.py: {stop[0]} during the last cell's final writes: every cell is done", file=sys.stderr)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding one sub-folder per domain")
    parser.add_argument("--tasks", required=True, help="comma-separated SOURCE:TARGET domain names")
    parser.add_argument("--methods", default="source-only,dann,cdan-e")
    parser.add_argument("--domain-labels", default="fixed,go")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/runs/uda")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights")
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("--freeze-backbone", action="store_true")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--min-crop", type=float, default=0.08)
    parser.add_argument("--hflip", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument("--cache-images", action="store_true", help="adapt --cache-images: decoded training images in memory")
    parser.add_argument("--eval-every", type=int, default=0, help="validators (and target accuracy) every N iterations")
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--select", default="last")
    parser.add_argument("--remedies", default="", help="comma-separated remedies (adapt's on/off options joined by +), each a row with the "
                                                       "last --domain-labels mode")
    parser.add_argument("--refresh-every", type=int, help="adapt --refresh-every for --balance-target / --label-shift-weights")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="any other adapt option for every cell, as in config.yaml (repeatable): --set schedule=reference --set "
                             "trade-off=2")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="tabulate the cells already finished; run nothing")
    args = parser.parse_args(argv)

    setup_logging(quiet=True)  # the table is the output; errors still show, one line each
    root, out = Path(args.root), Path(args.out)
    tasks, methods, labels = args.tasks.split(","), args.methods.split(","), args.domain_labels.split(",")
    remedies = [r for r in args.remedies.split(",") if r]
    for remedy in remedies:
        remedy_options(remedy)  # an unknown one stops the sweep before any cell runs
    options = {
        "backbone": args.backbone, "weights": args.weights, "pretrained": not args.no_pretrained, "freeze_backbone": args.freeze_backbone,
        "iters": args.iters, "batch_size": args.batch_size, "image_size": args.image_size, "min_crop": args.min_crop,
        "hflip": args.hflip, "device": args.device, "workers": args.workers, "cache_dir": args.cache_dir,
        "cache_images": args.cache_images,
        "eval_every": args.eval_every, "val_split": args.val_split, "select": args.select,
        **({"refresh_every": args.refresh_every} if args.refresh_every else {}),
        **dict(set_option(item) for item in args.set),
    }
    todo = cells(tasks, methods, labels, args.seeds, remedies)
    for cell in todo:  # an option no cell can run with stops the sweep before any cell runs
        try:
            cell_config(cell, root, options)
        except InputError as exc:
            raise SystemExit(f"uda.py: {exc}") from None
    results: dict[tuple, list[dict]] = {}
    started = time.perf_counter()
    with stop_after_the_cell() as stop:
        for cell, summary in sweep(todo, root, out, options, args.table_only, stop, results):
            results.setdefault((cell.task, cell.method, cell.labels, cell.remedy), []).append(summary)
            if not args.quiet:
                done = done_cells(results)
                print(f"[{done}/{len(todo)}] {cell.task} {cell.method} {cell.labels or ''} {cell.remedy} seed {cell.seed}: "
                      f"target top-1 {100 * summary['target_acc']:.2f} % ({summary['seconds']:.0f} s)", flush=True)
    text = table(results, tasks, methods, labels, remedies)
    if args.eval_every:
        text += "\nValidators (oriented higher-is-better) against target accuracy over the evaluated snapshots:\n\n"
        text += validator_table(results, tasks)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    print(text)
    if not args.quiet:
        print(f"{len(todo)} cells in {time.perf_counter() - started:.0f} s; table in {out / 'results.md'}")
    return text


if __name__ == "__main__":
    logging.getLogger("golabels").setLevel(logging.ERROR)
    main()
