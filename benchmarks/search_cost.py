"""What `--method auto` costs against one recipe, side by side in one run (issue 42).

Runs `golabels adapt SOURCE TARGET --freeze-backbone ...` as a user's shell would, once with
`--method auto` and once with `--method BASELINE` (today's default), alternating, --repeats times,
on the same cached features (the first run fills the cache; that run is not timed), and prints
each wall time and the ratio of the medians. Nothing else should run on the machine meanwhile.

    python benchmarks/search_cost.py /tmp/golabels-data/amazon /tmp/golabels-data/webcam --out /tmp/cost \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --iters 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def adapt(args: argparse.Namespace, method: str, out: Path) -> tuple[float, dict]:
    command = [sys.executable, "-m", "golabels_cli", "adapt", args.source, args.target, "--backbone", args.backbone, "--freeze-backbone",
               "--iters", str(args.iters), "--method", method, "--cache-dir", args.cache_dir, "--out", str(out), "--quiet", "--json",
               *(["--weights", args.weights] if args.weights else ["--no-pretrained"]),
               *(["--image-size", str(args.image_size)] if args.image_size else [])]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"search_cost.py: golabels adapt --method {method} failed: {result.stderr.strip().splitlines()[-1:]}")
    return seconds, json.loads(result.stdout)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--baseline", default="cdan-e+bnm", help="the recipe --method auto is compared with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", help="default: OUT/cache")
    args = parser.parse_args(argv)
    out = Path(args.out)
    args.cache_dir = args.cache_dir or str(out / "cache")
    out.mkdir(parents=True, exist_ok=True)
    adapt(args, args.baseline, out / "warm-up")  # fills the feature cache: every timed run reads it
    walls: dict[str, list[float]] = {args.baseline: [], "auto": []}
    for i in range(args.repeats):
        for method in walls:
            seconds, summary = adapt(args, method, out / f"{method}-{i}")
            walls[method].append(seconds)
            print(f"{method:>12} run {i}: {seconds:6.1f} s wall, {summary['seconds']:6.1f} s training, "
                  f"{len(summary.get('search', {}).get('candidates', [])) or 1} run(s)", flush=True)
    medians = {m: statistics.median(v) for m, v in walls.items()}
    ratio = medians["auto"] / medians[args.baseline]
    print(f"median wall: --method auto {medians['auto']:.1f} s, --method {args.baseline} {medians[args.baseline]:.1f} s: {ratio:.2f}x")
    return {"walls": walls, "ratio": ratio}


if __name__ == "__main__":
    main()
