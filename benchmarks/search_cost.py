"""What `--method auto` costs against one recipe, side by side in one run (issues 42, 52).

Runs `golabels adapt SOURCE TARGET --freeze-backbone ...` as a user's shell would, once with
`--method BASELINE` and once with `--method auto --search-pick P` for each P of --picks,
alternating, --repeats times, on the same cached features (the first run fills the cache; that
run is not timed), and prints each wall time and the ratios of the medians: each search against
the baseline, and each against the first pick. With --before DIR (a checkout of an earlier
golabels, e.g. `git worktree add /tmp/before HEAD~3`), that checkout's own default search runs in
the same rounds, and each search is compared with it too. Nothing else should run on the machine
meanwhile.

    python benchmarks/search_cost.py /tmp/golabels-data/amazon /tmp/golabels-data/webcam --out /tmp/cost \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --iters 1000 --repeats 3 --picks ensemble,student
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


BEFORE = "before"  # --before's default search


def adapt(args: argparse.Namespace, method: str, out: Path) -> tuple[float, dict]:
    """`method`: a recipe, "auto:PICK" for a search shipping by --search-pick PICK, or BEFORE: the
    default search of the checkout --before names."""
    before = method == BEFORE
    recipe, _, pick = ("auto", "", "") if before else method.partition(":")
    command = [sys.executable, "-m", "golabels_cli", "adapt", args.source, args.target, "--backbone", args.backbone, "--freeze-backbone",
               "--iters", str(args.iters), "--method", recipe, *(["--search-pick", pick] if pick else []), "--cache-dir", args.cache_dir,
               "--out", str(out), "--quiet", "--json",
               *(["--weights", args.weights] if args.weights else ["--no-pretrained"]),
               *(["--image-size", str(args.image_size)] if args.image_size else [])]
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PYTHONPATH": args.before} if before else {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
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
    parser.add_argument("--picks", default="ensemble", help="the searches timed, one per --search-pick value, comma-separated")
    parser.add_argument("--before", help="a checkout of an earlier golabels: its default search is timed in the same rounds")
    args = parser.parse_args(argv)
    out = Path(args.out)
    args.cache_dir = args.cache_dir or str(out / "cache")
    out.mkdir(parents=True, exist_ok=True)
    adapt(args, args.baseline, out / "warm-up")  # fills the feature cache: every timed run reads it
    walls: dict[str, list[float]] = {args.baseline: [], **({BEFORE: []} if args.before else {}),
                                     **{f"auto:{p}": [] for p in args.picks.split(",")}}
    for i in range(args.repeats):
        for method in walls:
            seconds, summary = adapt(args, method, out / f"{method.replace(':', '-')}-{i}")
            walls[method].append(seconds)
            print(f"{method:>12} run {i}: {seconds:6.1f} s wall, {summary['seconds']:6.1f} s training, "
                  f"{len(summary.get('search', {}).get('candidates', [])) or 1} run(s)", flush=True)
    medians = {m: statistics.median(v) for m, v in walls.items()}
    searches = [m for m in walls if m not in (args.baseline, BEFORE)]
    ratios = {m: medians[m] / medians[args.baseline] for m in searches}
    if args.before:
        print(f"median wall: the default search of {args.before} {medians[BEFORE]:.1f} s, --method {args.baseline} "
              f"{medians[args.baseline]:.1f} s: {medians[BEFORE] / medians[args.baseline]:.2f}x")
    for m in searches:
        print(f"median wall: --method auto --search-pick {m.split(':')[1]} {medians[m]:.1f} s, --method {args.baseline} "
              f"{medians[args.baseline]:.1f} s: {ratios[m]:.2f}x"
              + (f"; {medians[m] / medians[searches[0]]:.2f}x the {searches[0].split(':')[1]} search" if m != searches[0] else "")
              + (f"; {medians[m] / medians[BEFORE]:.2f}x the default search before" if args.before else ""))
    return {"walls": walls, "ratio": ratios[searches[0]], "ratios": ratios,
            **({"before": medians[BEFORE] / medians[args.baseline]} if args.before else {})}


if __name__ == "__main__":
    main()
