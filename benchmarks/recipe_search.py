"""How well each label-free rule of `--method auto` chooses, measured on finished uda.py sweeps.

`--method auto` trains every candidate recipe as `golabels adapt --method RECIPE` would and ships
what a rule picks without target labels (issue 42). Its candidate runs are exactly the cells of a
`benchmarks/uda.py` sweep of the same recipes and options, so this reads such a sweep (OUT/<src>-<tgt>/
<recipe>/seed<k>, each run with --eval-dir the target's labels) and, per task and seed, applies
each rule as the search does (golabels.hooks.search_pick on golabels.hooks.candidate_record):

    ensemble      the adapted candidates' heads on the one backbone, probabilities averaged
                  (hooks.HeadEnsemble over the candidates' model files, scored on the cached
                  target features: what the search ships and evaluates)
    student       one new head taught by that ensemble (--search-pick student): the teacher's
                  file written as the search writes it (hooks.save_teacher), then the student's
                  run, `golabels adapt --method STUDENT_RECIPE --teacher TEACHER` on the options of
                  the sweep's cell of that recipe, in OUT/<src>-<tgt>/student/seed<k> (resumable;
                  two copies of this script share the student cells, each taking the ones the
                  other is not running)
    agreement     the adapted candidate agreeing most with the ensemble on the target
                  (hooks.candidate_agreements, as the search computes it)
    <validator>   the candidate that validator scores best at its last evaluation

and prints, per task, the target top-1 of every candidate and every rule (mean ± std over seeds),
how often each rule shipped the seed's best candidate, the mean over tasks, and the seconds of
training of each stage (the candidates, the student). The same table goes to OUT/search.md.

    python benchmarks/recipe_search.py --sweep /tmp/sw/cand --root /tmp/golabels-data --cache-dir /tmp/gl-cache \\
        --tasks amazon:webcam,webcam:amazon --seeds 5 --recipes cdan-e+bnm,cdan-e+mcc,mcc,bnm,source-only --default cdan-e+bnm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

import golabels
from golabels.hooks import (LABEL_FREE, STUDENT_RECIPE, HeadEnsemble, backbone_features, candidate_agreements, candidate_record,
                            load_model, model_key, parse_method, save_teacher, scan_labeled, scan_unlabeled, search_pick)
from uda import run_locked  # benchmarks/uda.py's: a cell read, resumed or run, under a lock another copy shares

ENSEMBLE, STUDENT, AGREEMENT = "ensemble", "student", "agreement"


def cell_dir(sweep: Path, task: str, recipe: str, seed: int) -> Path:
    """uda.py's folder of a cell: recipes with a discriminator carry their --domain-labels (fixed)."""
    source, target = task.split(":")
    name = recipe if not parse_method(recipe).adversarial else f"{recipe}-fixed"
    return sweep / f"{source}-{target}" / name / f"seed{seed}"


def finished(folder: Path) -> dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


@torch.no_grad()
def ensemble_accuracy(folders: list[Path], target: Path, cache_dir: str) -> float:
    """The ensemble's top-1 on the labeled target folder, from the candidates' model files and the
    backbone's cached features of the target (computed once by the sweep)."""
    models = [load_model(f) for f in folders]
    info = models[0][1]
    ensemble = HeadEnsemble(models[0][0].backbone, [m for m, _ in models]).eval()
    images = scan_labeled(str(target), "eval")
    if images.classes != info.classes:
        raise SystemExit(f"recipe_search.py: {target}'s classes are not the model's")
    key = model_key(info.backbone, ensemble.backbone, info.data_config)
    features = backbone_features(images, ensemble.backbone, key, info.data_config, torch.device("cpu"), cache_dir, 128)
    predicted = ensemble.classify(features.values)[0].argmax(1)
    return float((predicted == torch.tensor(images.labels)).float().mean())


def student_run(sweep: Path, out: Path, task: str, seed: int, members: list[str], wait: bool = True) -> dict | None:
    """The student's summary for a task and seed: read when done, resumed, or trained, a cell as
    uda.py runs one (two copies of this script share them). Its teacher is the members' ensemble,
    written where the search writes it; its options are those of the sweep's cell of
    STUDENT_RECIPE, with --teacher. With wait=False a cell another copy is running gives None."""

    def config():
        teacher = out / "-".join(task.split(":")) / "teacher" / f"seed{seed}.safetensors"
        teacher.parent.mkdir(parents=True, exist_ok=True)
        save_teacher([cell_dir(sweep, task, m, seed) for m in members], members, teacher)
        cell = cell_dir(sweep, task, STUDENT_RECIPE, seed)
        if not (cell / "config.yaml").is_file():
            raise SystemExit(f"recipe_search.py: the student's options are those of the sweep's {STUDENT_RECIPE} cell, and {cell} has none")
        return dataclasses.replace(golabels.load_config(cell / "config.yaml"), teacher=str(teacher))

    return run_locked(out / "-".join(task.split(":")) / STUDENT / f"seed{seed}", config, wait)


def agreements(sweep: Path, root: Path, cache_dir: str, task: str, seed: int, recipes: list[str], members: list[str]) -> dict:
    folders = [cell_dir(sweep, task, r, seed) for r in recipes]
    return candidate_agreements(folders, recipes, members, scan_unlabeled(str(root / task.split(":")[1])), torch.device("cpu"), cache_dir)


def measure(sweep: Path, root: Path, cache_dir: str, tasks: list[str], seeds: int, recipes: list[str], out: Path | None = None,
            student: bool = True) -> dict:
    """{task: {"candidates": {recipe: [acc per seed]}, "rules": {rule: [acc]}, "oracle_hits": {rule: n}, "seeds": n,
    "seconds": {"candidates": [s per seed], "student": [s]}}}. The students are trained first (two
    copies of this script share them), then everything is read."""
    rules = [ENSEMBLE, *([STUDENT] if student else []), AGREEMENT, *(k.replace("_", "-") for k in LABEL_FREE)]
    out = out or sweep
    complete = []  # (task, seed, records) of every seed whose candidates are all done
    for task in tasks:
        for seed in range(seeds):
            folders = [cell_dir(sweep, task, r, seed) for r in recipes]
            summaries = [finished(f) for f in folders]
            if all(s is not None for s in summaries):  # a seed whose candidates are not all done is left out of every cell alike
                complete.append((task, seed, [candidate_record(r, f, s) for r, f, s in zip(recipes, folders, summaries)]))
    adapted = [r for r in recipes if parse_method(r).uses_target]
    if student:
        waiting = [(task, seed) for task, seed, _ in complete if student_run(sweep, out, task, seed, adapted, wait=False) is None]
        for task, seed in waiting:
            student_run(sweep, out, task, seed, adapted)
    results = {task: {"candidates": {r: [] for r in recipes}, "rules": {r: [] for r in rules}, "oracle_hits": dict.fromkeys(rules, 0),
                      "seeds": 0, "seconds": {"candidates": [], "student": []}} for task in tasks}
    for task, seed, records in complete:
        row = results[task]
        for record, value in zip(records, agreements(sweep, root, cache_dir, task, seed, recipes, adapted).values()):
            record["agreement"] = value
        accuracy = {r["recipe"]: r["target_acc"] for r in records}
        best = max(accuracy.values())
        for recipe in recipes:
            row["candidates"][recipe].append(accuracy[recipe])
        row["seconds"]["candidates"].append(sum(r["seconds"] for r in records))
        for rule in rules:
            shipped, members, _ = search_pick(records, rule)
            if shipped == ENSEMBLE:
                acc = ensemble_accuracy([cell_dir(sweep, task, m, seed) for m in members], root / task.split(":")[1], cache_dir)
            elif shipped == STUDENT:
                taught = student_run(sweep, out, task, seed, members)
                acc = taught["target_acc"]
                row["seconds"]["student"].append(taught["seconds"])
            else:
                acc = accuracy[shipped]
                row["oracle_hits"][rule] += acc == best
            row["rules"][rule].append(acc)
        row["seeds"] += 1
    return results


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{100 * statistics.mean(values):.2f} ± {100 * (statistics.stdev(values) if len(values) > 1 else 0.0):.2f}"


def table(results: dict, recipes: list[str], default: str | None) -> str:
    rules = list(next(iter(results.values()))["rules"])
    columns = [*recipes, *(f"pick: {r}" for r in rules)]
    lines = ["| task | seeds | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    means = {c: [] for c in columns}
    for task, row in results.items():
        cells = []
        for c in columns:
            values = row["candidates"][c] if c in recipes else row["rules"][c.removeprefix("pick: ")]
            cells.append(mean_std(values))
            if values:
                means[c].append(statistics.mean(values))
        lines.append(f"| {task.replace(':', ' → ')} | {row['seeds']} | " + " | ".join(cells) + " |")
    lines.append("| **mean over tasks** | | " + " | ".join(f"{100 * statistics.mean(v):.2f}" if v else "—" for v in means.values()) + " |")
    hits = {r: sum(row["oracle_hits"][r] for row in results.values()) for r in rules if r not in (ENSEMBLE, STUDENT)}
    total = sum(row["seeds"] for row in results.values())
    text = "\n".join(lines) + "\n\n"
    text += "How often a rule that ships one candidate shipped the seed's best: " + ", ".join(f"{r} {n}/{total}" for r, n in hits.items())
    text += "\n\n" + _seconds(results)
    if default:
        text += _acceptance(results, recipes, default)
    return text


def _seconds(results: dict) -> str:
    """The training seconds of each stage, per task: the candidates' (all of them) and the student's, mean over seeds."""
    lines = ["| task | candidates (s) | student (s) | student / candidates |", "| --- | --- | --- | --- |"]
    for task, row in results.items():
        candidates, student = row["seconds"]["candidates"], row["seconds"]["student"]
        if not candidates:
            continue
        ratio = f"{statistics.mean(student) / statistics.mean(candidates):.3f}" if student else "—"
        shown = f"{statistics.mean(student):.1f}" if student else "—"
        lines.append(f"| {task.replace(':', ' → ')} | {statistics.mean(candidates):.1f} | {shown} | {ratio} |")
    return "\n".join(lines) + "\n"


def _acceptance(results: dict, recipes: list[str], default: str) -> str:
    """Per rule: on how many tasks it is at or above the best single candidate's mean minus that
    candidate's std, and at or above source-only's mean; its mean over tasks against today's default."""
    lines = ["", f"| rule | tasks ≥ best candidate − 1 std | tasks ≥ source-only | mean − {default} (points) |",
             "| --- | --- | --- | --- |"]
    for rule in next(iter(results.values()))["rules"]:
        within = floor = 0
        gaps = []
        for row in results.values():
            got = row["rules"][rule]
            if not got:
                continue
            best = max(recipes, key=lambda r: statistics.mean(row["candidates"][r]))
            spread = statistics.stdev(row["candidates"][best]) if len(row["candidates"][best]) > 1 else 0.0
            within += statistics.mean(got) >= statistics.mean(row["candidates"][best]) - spread
            if "source-only" in row["candidates"]:
                floor += statistics.mean(got) >= statistics.mean(row["candidates"]["source-only"])
            gaps.append(statistics.mean(got) - statistics.mean(row["candidates"][default]))
        lines.append(f"| {rule} | {within}/{len(gaps)} | {floor}/{len(gaps)} | {100 * statistics.mean(gaps):+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True, help="a benchmarks/uda.py --out folder holding every candidate recipe's cells")
    parser.add_argument("--root", required=True, help="the sweep's --root: the labeled target folders")
    parser.add_argument("--cache-dir", required=True, help="the sweep's --cache-dir: the backbone's cached features")
    parser.add_argument("--tasks", required=True, help="comma-separated SOURCE:TARGET")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--recipes", default="cdan-e+bnm,cdan-e+mcc,mcc,bnm,source-only", help="the candidates, in --search-recipes order")
    parser.add_argument("--default", help="the recipe the rules are compared with (today's default)")
    parser.add_argument("--out", help="folder for search.md, search.json and the students' runs (default: --sweep)")
    parser.add_argument("--no-student", action="store_true", help="leave the student rule out (trains nothing)")
    args = parser.parse_args(argv)
    recipes = args.recipes.split(",")
    out = Path(args.out or args.sweep)
    results = measure(Path(args.sweep), Path(args.root), args.cache_dir, args.tasks.split(","), args.seeds, recipes, out,
                      not args.no_student)
    text = table(results, recipes, args.default)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.md").write_text(text)
    (out / "search.json").write_text(json.dumps(results, indent=1))
    print(text)
    return text


if __name__ == "__main__":
    main()
