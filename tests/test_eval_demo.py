import csv
import json
import shutil

import pytest
import yaml

from conftest import adapt_tiny, cli


def test_eval_reports_accuracy_per_class_and_confusion(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "5")
    result = cli("eval", run, target, "--json", "--device", "cpu", "--confusion", tmp_path / "conf.csv")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 24 and 0 <= report["accuracy"] <= 1
    per_class = report["per_class"]
    assert [r["name"] for r in per_class] == ["circle", "square", "triangle"] and all(r["images"] == 8 for r in per_class)
    assert abs(report["mean_class_accuracy"] - sum(r["accuracy"] for r in per_class) / 3) < 1e-9
    correct = sum(r["correct"] for r in per_class)
    assert abs(report["accuracy"] - correct / 24) < 1e-9
    rows = list(csv.reader((tmp_path / "conf.csv").open()))
    assert rows[0][1:] == ["circle", "square", "triangle"]
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 24
    assert [int(rows[i + 1][i + 1]) for i in range(3)] == [r["correct"] for r in per_class]
    # The same numbers as a table for people, and the same file is never overwritten.
    table = cli("eval", run / "model.safetensors", target, "--device", "cpu")
    assert table.exit_code == 0 and "circle" in table.stdout and "mean per-class accuracy" in table.stdout
    # the largest mistakes, in the JSON and in the table (issue 45 item 9)
    mistakes = {(r[0], c): int(v) for r in rows[1:] for c, v in zip(rows[0][1:], r[1:]) if r[0] != c and int(v)}
    confused = report["most_confused"]
    assert [(p["true"], p["predicted"]) for p in confused] == sorted(mistakes, key=lambda k: (-mistakes[k], k))[:5]
    assert all(p["images"] == mistakes[(p["true"], p["predicted"])] and p["share"] == round(p["images"] / 8, 6) for p in confused)
    if confused:
        assert "most confused" in table.stdout and f"{confused[0]['images'] / 8:.1%}" in table.stdout
    again = cli("eval", run, target, "--confusion", tmp_path / "conf.csv")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_eval_matches_classes_by_name(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "3")
    subset = tmp_path / "subset"
    shutil.copytree(target / "triangle", subset / "triangle")
    result = cli("eval", run, subset, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["true_classes"] == ["triangle"] and report["predicted_classes"] == ["circle", "square", "triangle"]
    assert report["per_class"][0]["correct"] == report["confusion"][0][2]
    shutil.copytree(target / "circle", subset / "hexagon")
    bad = cli("eval", run, subset)
    assert bad.exit_code == 2 and "'hexagon'" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_of_missing_or_foreign_model(domains, tmp_path):
    _, target = domains
    assert cli("eval", tmp_path / "nothing", target).exit_code == 2
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    result = cli("eval", tmp_path / "x.safetensors", target)
    assert result.exit_code == 2 and "cannot read model" in result.stderr


def test_demo_runs_end_to_end(tmp_path):
    from golabels_cli.config import TRAINED_BACKBONE_METHOD, AdaptConfig

    result = cli("demo", "--out", tmp_path / "demo", "--iters", "4", "--seed", "1", "--per-class", "30", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for key, folder in (("source_only", "source-only"), ("adapted", "adapted")):
        assert 0 <= report[key]["target_acc"] <= 1
        assert (tmp_path / "demo" / folder / "model.safetensors").exists()
        assert yaml.safe_load((tmp_path / "demo" / folder / "config.yaml").read_text())["seed"] == 1
    # The adapted run is golabels' default recipe for a backbone that trains (the demo's, from random
    # init): what a user gets from `golabels adapt`.
    defaults = AdaptConfig()
    assert (report["adapted"]["method"], report["adapted"]["domain_labels"]) == (TRAINED_BACKBONE_METHOD, defaults.domain_labels)
    assert report["gain"] == pytest.approx(report["adapted"]["target_acc"] - report["source_only"]["target_acc"])
    # The demo ships the adapted model: ONNX export, then predict with it on the target images.
    assert report["export"]["onnx"] == str(tmp_path / "demo" / "adapted" / "model.onnx") and report["export"]["max_abs_diff"] <= 1e-4
    rows = list(csv.DictReader(open(report["predict"]["csv"])))
    assert len(rows) == report["predict"]["rows"] == 300  # 30 of each digit
    # ONNX labels agree with eval's PyTorch ones: the same accuracy, give or take a near-tie.
    assert abs(report["predict"]["target_acc"] - report["adapted"]["target_acc"]) <= 1 / 300 + 1e-9
    # Without --json: both figures, the gain and what changed.
    text = cli("demo", "--out", tmp_path / "demo2", "--iters", "2", "--per-class", "5", "--quiet")
    assert text.exit_code == 0, text.stderr
    assert "source-only" in text.stdout and "points)" in text.stdout and "what changed" in text.stdout


def test_help_and_version():
    assert "golabels" in cli("--version").stdout
    for command in ("adapt", "eval", "demo", "export", "predict"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout
    text = cli("adapt", "--help").stdout
    assert "--domain-labels" in text
    from golabels_cli.methods import METHODS

    for method in METHODS:  # every method on a line of its own, with what it is
        assert any(line.strip().lstrip("•-* ").startswith(f"{method}: ") for line in text.splitlines()), method
    assert "did you mean gvb" in cli("adapt", "a", "b", "--method", "gbv").stderr


def test_most_confused_pairs_are_the_largest_mistakes_by_name():
    import torch

    from golabels_cli.inference import most_confused

    confusion = torch.tensor([[5, 3, 0, 1], [2, 6, 2, 0], [0, 4, 4, 0]])  # rows: true a b c; columns: predicted a b c d
    pairs = most_confused(confusion, ["a", "b", "c"], ["a", "b", "c", "d"], n=4)
    assert [(p.true, p.predicted, p.images) for p in pairs] == [("c", "b", 4), ("a", "b", 3), ("b", "a", 2), ("b", "c", 2)]
    assert pairs[0].share == 0.5
    assert most_confused(torch.eye(3, dtype=torch.long), ["a", "b", "c"], ["a", "b", "c"]) == []


def test_demo_per_class_is_checked_and_its_default_is_the_demos():
    from golabels_cli.demo import DEMO_PER_CLASS, MIN_PER_CLASS

    assert f"default {DEMO_PER_CLASS} " in " ".join(cli("demo", "--help").stdout.replace("│", " ").split())
    result = cli("demo", "--per-class", str(MIN_PER_CLASS - 1))
    assert result.exit_code == 2 and f"--per-class at least {MIN_PER_CLASS}" in result.stderr
