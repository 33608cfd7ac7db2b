"""The demo's wall time under each thread setting, side by side in one run (issue 55 item 1):

    chosen    golabels' own choice (the steps' thread count measured when each run starts)
    one       OMP_NUM_THREADS=1
    default   OMP_NUM_THREADS=<the cores torch sees>: torch's default, what the demo ran on before

With --load N, N processes spinning on the CPU run alongside (the "other job" of a shared
machine), started before and stopped after the measurements. The variants alternate, --repeats
times; each row is `golabels demo --iters ITERS --json` in a fresh process, its wall time, the
thread count its adapted run recorded, and its two accuracies.

    python benchmarks/demo_threads.py --iters 150 --repeats 1 --load 0
    python benchmarks/demo_threads.py --iters 150 --repeats 1 --load 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("chosen", "one", "default")


def spin() -> None:
    while True:
        pass


def demo(variant: str, iters: int, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if variant == "one":
        env["OMP_NUM_THREADS"] = "1"
    elif variant == "default":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "golabels_cli", "demo", "--iters", str(iters), "--out", str(out), "--json"],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demo ({variant}) failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    result = json.loads(done.stdout)
    summary = json.loads(Path(result["adapted"]["run_dir"], "summary.json").read_text())
    return {"variant": variant, "seconds": seconds, "threads": summary.get("threads"),
            "source_only": result["source_only"]["target_acc"], "adapted": result["adapted"]["target_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--load", type=int, default=0, help="processes spinning on the CPU meanwhile")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", help="where the demos write (default: a temporary folder, removed)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; choose from {', '.join(VARIANTS)}")
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(args.out or scratch)
            for r in range(args.repeats):
                for variant in variants:
                    row = demo(variant, args.iters, root / f"{variant}-{r}")
                    rows.append(row)
                    print(f"{variant:>8}: {row['seconds']:7.1f} s  threads {row['threads']}  source-only {row['source_only']:.4f}  "
                          f"adapted {row['adapted']:.4f}", flush=True)
    finally:
        for p in spinners:
            p.terminate()
    print(f"demo --iters {args.iters}, {args.load} spinning process(es) alongside, median of {args.repeats}:")
    medians = {v: statistics.median(r["seconds"] for r in rows if r["variant"] == v) for v in variants}
    for v in variants:
        print(f"  {v}: {medians[v]:.1f} s" + (f" ({medians[v] / medians['chosen']:.2f}x chosen)" if "chosen" in medians and v != "chosen"
                                               else ""))


if __name__ == "__main__":
    main()
