"""How accurate a teacher's labels of the target are, refined by each rule, on finished uda.py sweeps (issue 52).

The student of `--search-pick student` learns from its teacher's labels of the target images,
refined by the target's own structure (golabels_cli/training/teacher.py). A student trained on
fixed features ends close to the labels it is given, so the labels' accuracy says, before any
training, which refinement is worth a student. This reads a sweep of the candidate recipes
(benchmarks/uda.py, OUT/<src>-<tgt>/<recipe>/seed<k>), makes the teacher of each task and seed as
the search does (the adapted candidates' heads, probabilities averaged), and scores against the
target's labels:

    teacher           P, the ensemble's own predictions (what --search-pick ensemble ships)
    knn-K (members)   the mean of P over the K nearest target images in each member's bottleneck
                      space, averaged over the members: the shipped rule for K = NEIGHBOURS
                      (hooks.refine_labels)
    centroids (members)   SHOT's centroids: each class's P-weighted mean of a member's normalized
                      features, each image's softmax over its cosine to them (temperature 0.1), averaged
    centroids (backbone)  the same in the frozen backbone's features
    teacher x centroids (members)   P times the members' centroid assignment, normalized

Target top-1 of each rule's argmax, mean ± std over seeds, per task and over tasks; to
OUT/teacher_rules.md as well.

    python benchmarks/teacher_rules.py --sweep /tmp/sw/cand --root /tmp/golabels-data --cache-dir /tmp/gl-cache \\
        --tasks amazon:webcam,webcam:amazon --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from golabels.hooks import backbone_features, load_model, model_key, parse_method, refine_labels, scan_labeled

CENTROID_TEMPERATURE = 0.1


def cell_dir(sweep: Path, task: str, recipe: str, seed: int) -> Path:
    source, target = task.split(":")
    return sweep / f"{source}-{target}" / (recipe if not parse_method(recipe).adversarial else f"{recipe}-fixed") / f"seed{seed}"


def centroids(probabilities: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    z = F.normalize(features, dim=1)
    c = F.normalize(probabilities.t() @ z / probabilities.sum(0)[:, None].clamp_min(1e-12), dim=1)
    return (z @ c.t() / CENTROID_TEMPERATURE).softmax(1)


@torch.no_grad()
def rules(folders: list[Path], target: Path, cache_dir: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({rule: labels [N, C]}, the target's labels [N]) for the members in `folders`."""
    loaded = [load_model(f) for f in folders]
    model, info = loaded[0]
    images = scan_labeled(str(target), "eval")
    key = model_key(info.backbone, model.backbone, info.data_config)
    x = backbone_features(images, model.backbone, key, info.data_config, torch.device("cpu"), cache_dir, 128).values
    outputs = [m.eval().classify(x) for m, _ in loaded]
    p = torch.stack([logits.softmax(1) for logits, _ in outputs]).mean(0)
    members = [features for _, features in outputs]
    q = torch.stack([centroids(p, z) for z in members]).mean(0)
    out = {"teacher": p, **{f"knn-{k} (members)": refine_labels(p, tuple(members), k) for k in (3, 5, 10)},
           "centroids (members)": q, "centroids (backbone)": centroids(p, x), "teacher x centroids (members)": p * q}
    return out, torch.tensor(images.labels)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--members", default="cdan-e+bnm,cdan-e+mcc,mcc,bnm", help="the teacher's members: the adapted candidates")
    parser.add_argument("--out", help="folder for teacher_rules.md (default: --sweep)")
    args = parser.parse_args(argv)
    sweep, members = Path(args.sweep), args.members.split(",")
    table: dict[str, dict[str, list[float]]] = {}
    for task in args.tasks.split(","):
        for seed in range(args.seeds):
            folders = [cell_dir(sweep, task, m, seed) for m in members]
            if not all((f / "summary.json").is_file() for f in folders):
                continue
            labels, truth = rules(folders, Path(args.root) / task.split(":")[1], args.cache_dir)
            for rule, value in labels.items():
                table.setdefault(task, {}).setdefault(rule, []).append(float((value.argmax(1) == truth).float().mean()))
    names = list(next(iter(table.values())))
    lines = ["| task | seeds | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
    for task, row in table.items():
        cells = [f"{100 * statistics.mean(v):.2f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0):.2f}" for v in row.values()]
        lines.append(f"| {task.replace(':', ' → ')} | {len(row['teacher'])} | " + " | ".join(cells) + " |")
    means = {n: statistics.mean(statistics.mean(row[n]) for row in table.values()) for n in names}
    lines.append("| **mean over tasks** | | " + " | ".join(f"{100 * v:.2f}" for v in means.values()) + " |")
    gains = {n: sum(statistics.mean(row[n]) >= statistics.mean(row["teacher"]) for row in table.values()) for n in names[1:]}
    text = "\n".join(lines) + "\n\nTasks where a rule's labels are at least as accurate as the teacher's: " + \
        ", ".join(f"{n} {g}/{len(table)}" for n, g in gains.items()) + "\n"
    out = Path(args.out or args.sweep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "teacher_rules.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
