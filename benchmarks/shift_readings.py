"""What the label-shift warning reads on finished runs, recomputed with this version's rule.

For every run folder under the folders given (found by summary.json): the run's config is built
again (the same folders, held-out split and target sample), its model.safetensors loaded, and the
snapshot evaluated as the run's last evaluation is; printed per setting (the three folders above the
run's own, as a sweep names them: recipe/task/cell):
the shift the warning reads (`predicted_shift`: the model's target predictions against its
predictions on the held-out source), its chi-square p-value, the held-out source accuracy, how
many runs the rule warns on, and the true shift of the folders (the target's labels, from
--eval-dir, against the source's). Runs of source-only are listed but never warned.

    python benchmarks/shift_readings.py /tmp/sweep-office /tmp/lt-sweep/office
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from safetensors.torch import load_file

import golabels
from golabels.hooks import LoopState, build, eval_shift, validate_snapshot, warn_on_label_shift


def reading(run: Path) -> dict:
    """The last evaluation of the run's shipped model, and whether the warning fires on it."""
    cfg = golabels.load_config(run / "config.yaml")
    cfg.cache_images = False
    t = build(cfg)
    t.model.load_state_dict(load_file(str(run / "model.safetensors")))
    scores = {"iter": cfg.iters, **validate_snapshot(t, LoopState())}
    fired = []
    handler = logging.Handler()
    handler.emit = lambda record: fired.append(record.getMessage())
    logger = logging.getLogger("golabels")
    logger.addHandler(handler)
    try:
        warn_on_label_shift(t, LoopState(evals=[scores]), cfg.iters, scores)
    finally:
        logger.removeHandler(handler)
    true_shift = eval_shift(t)
    return {"run": str(run), "setting": f"{run.parent.parent.parent.name}/{run.parent.parent.name}/{run.parent.name}", "method": cfg.method,
            "predicted_shift": scores["predicted_shift"], "p": scores["predicted_shift_p"], "src_acc": scores.get("src_acc"),
            "em_shift": scores["prior_shift"], "true_shift": true_shift, "warns": bool(fired), "target_acc": scores.get("target_acc")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="JSON lines, one per run (runs already in it are not read again)")
    args = parser.parse_args(argv)
    logging.getLogger("golabels").setLevel(logging.WARNING)
    logging.getLogger("golabels").propagate = False
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out and args.out.is_file() else []
    done = {r["run"] for r in rows}
    for run in sorted({p.parent for folder in args.folders for p in folder.rglob("summary.json")}):
        if str(run) in done or not (run / "model.safetensors").is_file():
            continue
        row = reading(run)
        rows.append(row)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    by_setting = defaultdict(list)
    for r in rows:
        by_setting[r["setting"]].append(r)
    print("| setting | runs | true shift | read shift | p-value (max) | held-out source acc. | EM (for comparison) | warns |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")

    def span(values, fmt=".2f"):
        return f"{min(values):{fmt}}–{max(values):{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"

    for setting, rs in sorted(by_setting.items()):
        true = [r["true_shift"] for r in rs if r["true_shift"] is not None]
        accs = [r["src_acc"] for r in rs if r["src_acc"] is not None]
        print(f"| {setting} | {len(rs)} | {statistics.mean(true):.2f} | {span([r['predicted_shift'] for r in rs])} "
              f"| {max(r['p'] for r in rs):.1e} | {span(accs) if accs else '—'} | {span([r['em_shift'] for r in rs])} "
              f"| {sum(r['warns'] for r in rs)} of {len(rs)} |")


if __name__ == "__main__":
    main()
