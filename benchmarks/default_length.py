"""The frozen default's length and its smallest target (issue 45): `golabels adapt --freeze-backbone`
with every other option at its default (`--method auto`), run at several --iters, and on target
folders of a few images drawn from the target domain; each run's accuracy on the whole labeled
target domain (--eval-dir), its search's source-only candidate beside it. Resumable: a run with a
summary.json is done; several copies of the command share the runs (each claims one with mkdir),
so two side by side with OMP_NUM_THREADS=1 keep two cores busy.

    OMP_NUM_THREADS=1 python benchmarks/default_length.py lengths --root /tmp/golabels-data \\
        --tasks amazon:webcam,webcam:amazon --iters 1000,2000,5000,10000 --seeds 5 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --cache-dir /tmp/gl-cache --out /tmp/len
    OMP_NUM_THREADS=1 python benchmarks/default_length.py small-target --root /tmp/golabels-data \\
        --tasks amazon:webcam,webcam:amazon --sizes 1,4,16 --iters 1000 --seeds 5 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --cache-dir /tmp/gl-cache --out /tmp/small
    python benchmarks/default_length.py table --out /tmp/len      # (or /tmp/small): the Markdown table

The small targets are hard links to N images drawn at random (seeded by size and seed) from the
domain, so the feature cache applies to them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def small_target(domain: Path, size: int, seed: int, folder: Path) -> Path:
    """A folder of `size` images of `domain`, drawn at random, as hard links."""
    if folder.is_dir():
        return folder
    files = sorted(p for p in domain.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(random.Random(seed * 1000 + size).sample(files, size)):
        target = partial / f"{i:04d}{path.suffix}"
        if not target.exists():
            os.link(path, target)
    partial.rename(folder)
    return folder


def run_cell(args: argparse.Namespace, source: Path, target: Path, eval_dir: Path, iters: int, seed: int, out: Path) -> None:
    """One `golabels adapt`, unless done or claimed by another copy of this command."""
    if (out / "summary.json").is_file():
        return
    claim = out.with_name(out.name + ".claimed")
    try:
        claim.mkdir(parents=True)
    except FileExistsError:
        return
    command = [sys.executable, "-m", "golabels_cli", "adapt", str(source), str(target), "--backbone", args.backbone,
               "--weights", args.weights, "--freeze-backbone", "--iters", str(iters), "--eval-dir", str(eval_dir), "--eval-every", "0",
               "--workers", "0", "--device", "cpu", "--cache-dir", args.cache_dir, "--seed", str(seed), "--out", str(out), "--quiet"]
    print(" ".join(command), flush=True)
    result = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        os.rmdir(claim)  # another try may run it
        raise SystemExit(f"{out}: golabels adapt failed with exit {result.returncode}")


def tasks(text: str) -> list[tuple[str, str]]:
    return [tuple(t.split(":")) for t in text.split(",")]


def table(out: Path) -> str:
    """Target top-1 % (mean ± std over seeds) of each cell under `out`, and its source-only candidate's."""
    rows = ["| task | cell | seeds | --method auto | its source-only candidate | difference | seeds below source-only | seconds (mean) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cell in sorted((p for p in out.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name)):
        for task in sorted({r.name.rsplit("-", 1)[0] for r in cell.iterdir() if r.is_dir() and not r.name.endswith(".claimed")}):
            auto, floor, seconds = [], [], []
            for run in sorted(cell.glob(f"{task}-*/summary.json")):
                summary = json.loads(run.read_text())
                auto.append(summary["target_acc"] * 100)
                floor.append(summary["search"]["source_only_acc"] * 100)
                seconds.append(summary["seconds"])
            if not auto:
                continue
            diff = [a - b for a, b in zip(auto, floor)]
            rows.append(f"| {task.replace('-', ' → ')} | {cell.name} | {len(auto)} | {_cell(auto)} | {_cell(floor)} | "
                        f"{_cell(diff, '+.2f')} "
                        f"| {sum(d < 0 for d in diff)}/{len(diff)} | {statistics.mean(seconds):.0f} |")
    return "\n".join(rows)


def _cell(values: list[float], spec: str = ".2f") -> str:
    if len(values) < 2:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("lengths", "small-target", "table"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--root", help="folder holding one labeled sub-folder per domain")
    parser.add_argument("--tasks", default="amazon:webcam,webcam:amazon")
    parser.add_argument("--iters", default="1000", help="lengths: comma-separated; small-target: one")
    parser.add_argument("--sizes", default="1,4,16", help="small-target: target images per run")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "golabels"))
    args = parser.parse_args()
    out = Path(args.out)
    if args.what == "table":
        print(table(out))
        return
    if not (args.root and args.weights):
        parser.error("--root and --weights are needed to run")
    root = Path(args.root)
    lengths = [int(i) for i in args.iters.split(",")]
    for outer in (lengths if args.what == "lengths" else [int(s) for s in args.sizes.split(",")]):
        for seed in range(args.seeds):
            for source, target in tasks(args.tasks):
                if args.what == "lengths":
                    folder = root / target
                    run_cell(args, root / source, folder, folder, outer, seed, out / str(outer) / f"{source}-{target}-{seed}")
                else:
                    folder = small_target(root / target, outer, seed, out / "targets" / f"{target}-{outer}-{seed}")
                    run_cell(args, root / source, folder, root / target, lengths[0], seed, out / str(outer) / f"{source}-{target}-{seed}")
    print(table(out))


if __name__ == "__main__":
    main()
