"""What --eval-every's default costs: the share of a run's time spent evaluating, measured in the run.

Each run is `golabels adapt SOURCE TARGET OPTIONS...`, --eval-every left at its default unless the
options give it (a tenth of the run, at least 100 iterations apart on cached features and 1000
when the backbone trains); its summary.json records the seconds of the whole training
and of the evaluations in it (validators, --eval-dir, BatchNorm re-estimates), so the ratio comes
from one run, on one machine, under one load. Prints one row per run and --json writes them all.

    python benchmarks/eval_cost.py /data/amazon /data/webcam --out /tmp/eval-cost \\
        --run "--backbone tf_efficientnet_lite0 --weights lite0.safetensors --freeze-backbone --iters 1000" \\
        --run "--backbone tf_efficientnet_lite0 --weights lite0.safetensors --freeze-backbone"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def measure(source: str, target: str, options: list[str], out: Path) -> dict:
    """One run's figures; the run directory is `out`, which must not exist."""
    command = [sys.executable, "-m", "golabels_cli", "adapt", source, target, *options, "--out", str(out), "--json", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {shlex.join(options)} failed: "
                         f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
    summary = json.loads(result.stdout)
    config = (out / "config.yaml").read_text()
    every = next(int(line.split(":")[1]) for line in config.splitlines() if line.startswith("eval-every:"))
    return {"options": shlex.join(options), "iters": summary["iters"], "eval_every": every, "evaluations": len(summary["evals"]),
            "seconds": summary["seconds"], "eval_seconds": summary["eval_seconds"],
            "eval_share": round(summary["eval_seconds"] / max(summary["seconds"], 1e-9), 4),
            "environment": summary.get("environment")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--run", action="append", required=True, help="adapt's options for one run (quoted); repeat for more runs")
    parser.add_argument("--out", required=True, help="folder for the run directories (run1, run2, ...); must not exist")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON document")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists — pass a new --out folder")
    out.mkdir(parents=True)
    rows = [measure(args.source, args.target, shlex.split(options), out / f"run{i + 1}") for i, options in enumerate(args.run)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| run | iterations | --eval-every | evaluations | run seconds | evaluating | share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| `{row['options']}` | {row['iters']} | {row['eval_every']} | {row['evaluations']} | {row['seconds']:.1f} | "
              f"{row['eval_seconds']:.1f} | {100 * row['eval_share']:.1f} % |")


if __name__ == "__main__":
    main()
