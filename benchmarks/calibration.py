"""Does --calibrate source make the shipped model's confidences honest on a shifted target? (issue 55)

For each task and seed, trains what a user gets by default (`golabels adapt SRC TGT --freeze-backbone`:
the recipe search and its student) with `--eval-dir` the target's labels, and reads back the
calibration the run measured: the temperature fitted on the held-out source split, and the
expected calibration error (ECE, 15 bins) on the labeled target with the logits undivided and
divided by it, of the shipped model and of every candidate (each candidate ships its own
temperature when a validator picks it). Prints, per task, mean ± std over seeds of: the shipped
model's target accuracy (the temperature does not change it), temperature, target ECE at
temperature 1 and calibrated, and the candidates' target ECE before and after (mean over them), with
the number of task-seeds on which calibration lowered the shipped model's target ECE. The shipped
temperature is at least 1 (calibration.py); the fitted one, as runs written before that rule
shipped it, is shown beside it.

Runs are kept in OUT/<source>-<target>/seed<k> and read back when they are finished, so a second
call prints the table at once. One process at a time: a search measures its thread count.

    python benchmarks/calibration.py --root /tmp/golabels-data --out /tmp/cal --cache-dir /tmp/gl-cache \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --tasks amazon:webcam,webcam:amazon --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import golabels


def run(args: argparse.Namespace, task: str, seed: int) -> Path:
    """The task's finished default search for `seed`, trained if it is not there yet."""
    source, target = task.split(":")
    out = Path(args.out) / f"{source}-{target}" / f"seed{seed}"
    if not (out / "summary.json").is_file():
        options = {"weights": args.weights} if args.weights else {"pretrained": False}
        if args.image_size:
            options["image_size"] = args.image_size
        cfg = golabels.config(Path(args.root) / source, Path(args.root) / target, backbone=args.backbone, freeze_backbone=True,
                              iters=args.iters, seed=seed, eval_dir=str(Path(args.root) / target), cache_dir=args.cache_dir,
                              val_split=args.val_split, **options)
        golabels.adapt(cfg, out)
    return out


def figures(folder: Path) -> dict:
    """The shipped model's and its candidates' calibration figures, as its summary.json files hold them."""
    summary = json.loads((folder / "summary.json").read_text())
    shipped = summary["calibration"]
    if not shipped or not shipped.get("eval"):
        raise SystemExit(f"calibration.py: {folder} shipped an uncalibrated model (too few held-out source images: raise --val-split)")
    candidates = [json.loads((folder / "candidates" / c / "summary.json").read_text())
                  for c in sorted(p.name for p in (folder / "candidates").iterdir())]
    calibrated = [c["calibration"] for c in candidates if c.get("calibration") and c["calibration"].get("eval")]
    return {"accuracy": summary["target_acc"], "shipped": summary["search"]["shipped"], "temperature": shipped["temperature"],
            "ece_before": shipped["eval"]["ece_at_temperature_1"], "ece_fitted": shipped["eval"]["ece"],
            "ece_after": softened(shipped, "eval"),
            "source_before": shipped["source_val"]["ece_at_temperature_1"], "source_after": softened(shipped, "source_val"),
            "candidates_before": statistics.mean(c["eval"]["ece_at_temperature_1"] for c in calibrated),
            "candidates_after": statistics.mean(softened(c, "eval") for c in calibrated)}


def softened(calibration: dict, where: str) -> float:
    """The ECE with the temperature golabels ships, at least 1 (calibration.py): a run written before
    that rule that fitted T < 1 ships 1, whose ECE it recorded too."""
    figures = calibration[where]
    return figures["ece"] if calibration["temperature"] >= 1 else figures["ece_at_temperature_1"]


def cell(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * spread:.{digits}f}"


def table(rows: dict[str, list[dict]]) -> str:
    lines = ["| task | seeds | shipped accuracy (%) | fitted T | target ECE, T = 1 (%) | target ECE, fitted T (%) | "
             "target ECE, shipped T ≥ 1 (%) | lower | held-out source ECE, T = 1 → shipped (%) | "
             "candidates' target ECE, T = 1 → shipped (%) |",
             "|" + " --- |" * 10]
    for task, seeds in rows.items():
        def values(key: str) -> list[float]:
            return [s[key] for s in seeds]
        lower = sum(s["ece_after"] < s["ece_before"] for s in seeds)
        lines.append(f"| {task.replace(':', ' → ')} | {len(seeds)} | {cell(values('accuracy'))} | {cell(values('temperature'), 1, 3)} | "
                     f"{cell(values('ece_before'))} | {cell(values('ece_fitted'))} | {cell(values('ece_after'))} | {lower}/{len(seeds)} | "
                     f"{cell(values('source_before'))} → {cell(values('source_after'))} | "
                     f"{cell(values('candidates_before'))} → {cell(values('candidates_after'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding the domains' ImageFolders")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", default="amazon:webcam,webcam:amazon", help="SOURCE:TARGET pairs of --root's folders")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", help="local weights of --backbone (else random init)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--image-size", type=int, help="default: the backbone's own")
    parser.add_argument("--val-split", type=float, default=0.1, help="the held-out source the temperature is fitted on (golabels' default)")
    args = parser.parse_args(argv)
    rows = {task: [figures(run(args, task, seed)) for seed in range(args.seeds)] for task in args.tasks.split(",")}
    print(table(rows))
    first = Path(args.out) / "-".join(args.tasks.split(",")[0].split(":")) / "seed0"
    print(f"\nenvironment: {json.dumps(json.loads((first / 'summary.json').read_text()).get('environment'))}")
    return rows


if __name__ == "__main__":
    main()
