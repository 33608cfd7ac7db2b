"""How well finished runs read the target's class distribution: the label-shift detection's EM estimate
(`target_prior` of the run's last evaluated snapshot) against classify-and-count (the share of the
target images the run's model predicts as each class, from `golabels eval` on the whole target
folder), each against the truth (the target folder's class counts). Both are compared with the
source folder's class frequencies as the detection does: total variation, and whether it is above
the warning threshold.

    python benchmarks/prior_estimates.py /tmp/lt-sweep/digits /tmp/digits-sweep --out /tmp/prior-estimates.jsonl

Every run folder under the given folders (found by their summary.json) whose summary has a
`target_prior` and whose model.safetensors is there: one JSON line each into --out (a line already
there is not measured again), and a markdown table, one row per setting (the run folder's parent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from golabels.hooks import SHIFT_WARNING, class_counts, scan_labeled
from golabels.hooks import total_variation as tv


def class_shares(folder: Path, classes: list[str]) -> list[float]:
    """Each of `classes`' share of the images of a labeled folder, as golabels scans it (0 for a class it lacks)."""
    scanned = scan_labeled(folder)
    counts = dict(zip(scanned.classes, class_counts(scanned)))
    return [counts.get(c, 0) / len(scanned) for c in classes]


def total_variation(q: list[float], p: list[float]) -> float:
    return tv(torch.tensor(q), torch.tensor(p))


def measure(run: Path) -> dict | None:
    summary = json.loads((run / "summary.json").read_text())
    evals = [e for e in summary.get("evals", []) if e.get("target_prior")]
    if not evals or not (run / "model.safetensors").is_file():
        return None
    config = yaml.safe_load((run / "config.yaml").read_text())
    classes, target = summary["classes"], Path(config["target"])
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "eval", str(run), str(target), "--json"],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"prior_estimates.py: golabels eval {run} failed: {result.stderr.strip().splitlines()[-1]}")
    ev = json.loads(result.stdout)
    predicted = {name: sum(row[j] for row in ev["confusion"]) for j, name in enumerate(ev["predicted_classes"])}
    counted = [predicted.get(c, 0) / sum(predicted.values()) for c in classes]
    em, source, truth = evals[-1]["target_prior"], class_shares(Path(config["source"]), classes), class_shares(target, classes)
    return {"run": str(run), "setting": f"{run.parent.parent.name}/{run.parent.name}", "accuracy": ev["accuracy"],
            "true_shift": total_variation(truth, source), "em_shift": total_variation(em, source),
            "counted_shift": total_variation(counted, source), "em_error": total_variation(em, truth),
            "counted_error": total_variation(counted, truth)}


def table(rows: list[dict]) -> str:
    by_setting = defaultdict(list)
    for r in rows:
        by_setting[r["setting"]].append(r)
    lines = ["| setting | runs | true shift | EM | counted | warns: EM / counted | error: EM / counted |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def span(rs, key):
        low, high = min(r[key] for r in rs), max(r[key] for r in rs)
        return f"{low:.2f}" if round(low, 2) == round(high, 2) else f"{low:.2f}–{high:.2f}"

    for setting, rs in sorted(by_setting.items()):
        warns = [sum(r[k] > SHIFT_WARNING for r in rs) for k in ("em_shift", "counted_shift")]
        errors = [sum(r[k] for r in rs) / len(rs) for k in ("em_error", "counted_error")]
        lines.append(f"| {setting} | {len(rs)} | {span(rs, 'true_shift')} | {span(rs, 'em_shift')} | {span(rs, 'counted_shift')} "
                     f"| {warns[0]} / {warns[1]} | {errors[0]:.2f} / {errors[1]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding finished runs (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per run; runs already in it are not measured again")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            raise SystemExit(f"prior_estimates.py: {folder} is not a folder")
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.is_file() else []
    done = {r["run"] for r in rows}
    runs = sorted({p.parent for folder in args.folders for p in folder.rglob("summary.json")})
    for run in runs:
        if str(run) in done:
            continue
        row = measure(run)
        if row is not None:
            rows.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    if not rows:
        raise SystemExit("prior_estimates.py: no finished run with a target_prior and a model.safetensors under the folders given")
    print(table(rows))


if __name__ == "__main__":
    main()
