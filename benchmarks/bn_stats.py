"""--bn-stats target against train, paired: each run's last evaluation under both statistics.

A run with `--bn-stats target` and `--eval-dir` logs its accuracy under the re-estimated
statistics (`target_acc`) and under training's running averages (`target_acc_train_bn`) on the
same weights, so one run measures both, side by side. Given run directories (or folders holding
them, searched for summary.json), groups them by their parent folder (a benchmarks/uda.py cell,
say .../usps-mnist/cdan-e-fixed/seed0 -> usps-mnist/cdan-e-fixed) and prints one row per group:

    python benchmarks/bn_stats.py /tmp/sw/digits/bn-target /tmp/sw/office/bn-target
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args()
    groups: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for root in args.paths:
        for summary_path in sorted(root.rglob("summary.json")) if root.is_dir() else []:
            summary = json.loads(summary_path.read_text())
            last = (summary.get("evals") or [{}])[-1]
            if "target_acc" not in last or "target_acc_train_bn" not in last:
                continue  # not a --bn-stats target run with --eval-dir
            run = summary_path.parent
            group = f"{run.parent.parent.name}/{run.parent.name}"
            groups[group].append((run.name, last["target_acc"], last["target_acc_train_bn"]))
    if not groups:
        raise SystemExit("no run with --bn-stats target and --eval-dir found")
    print("| runs | n | train (running averages) | target (re-estimated) | target − train, per run |")
    print("| --- | --- | --- | --- | --- |")
    for group, runs in sorted(groups.items()):
        runs.sort()
        train = [r[2] for r in runs]
        target = [r[1] for r in runs]
        diffs = ", ".join(f"{100 * (a - b):+.2f}" for _, a, b in runs)
        print(f"| {group} | {len(runs)} | {mean_std(train)} | {mean_std(target)} | {diffs} |")


if __name__ == "__main__":
    main()
