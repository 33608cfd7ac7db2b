"""`golabels compare` (issue 55 item 5): runs side by side, grouped by setting, and with a labeled
folder their accuracies with intervals and a paired test between groups."""

import json

import numpy as np
import pytest

from conftest import TINY, adapt_tiny, cli, cli_subprocess, one_error_line, tree
from test_search import FROZEN


@pytest.fixture(scope="module")
def four_runs(domains, tmp_path_factory):
    """cdan-e+mcc with fixed and with Go-labels, seeds 0 and 1, on the frozen path."""
    source, target = domains
    root = tmp_path_factory.mktemp("compare")
    return {(labels, seed): adapt_tiny(source, target, root / f"{labels}-{seed}", *FROZEN, "--method", "cdan-e+mcc", "--domain-labels",
                                       labels, "--seed", str(seed), "--threads", "1")
            for labels in ("fixed", "go") for seed in (0, 1)}


def test_compare_groups_by_setting_and_tests_the_difference_on_the_same_images(four_runs, domains, tmp_path):
    target = domains[1]
    runs = [four_runs[k] for k in (("fixed", 0), ("fixed", 1), ("go", 0), ("go", 1))]
    before = {run: tree(run) for run in runs}
    result = cli_subprocess("compare", *runs, "--eval-dir", target, "--json", "--device", "cpu", "--plot", tmp_path / "go.png")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"domain_labels", "seed"} <= set(doc["differing"]) and doc["images"] == 24
    assert [r["group"] for r in doc["runs"]] == [0, 0, 1, 1]  # seeds apart, settings together
    for r in doc["runs"]:
        assert 0 <= r["interval"][0] <= r["accuracy"] <= r["interval"][1] <= 1 and set(r["validators"]) >= {"im", "snd", "dev"}
    reference, go = doc["groups"]
    assert reference["options"] == {"domain_labels": "fixed"} and go["options"] == {"domain_labels": "go"} and go["runs"] == 2
    assert go["difference"] == pytest.approx(go["accuracy"] - reference["accuracy"])
    assert go["difference_interval"][0] <= go["difference"] <= go["difference_interval"][1] and 0 < go["p"] <= 1
    assert doc["plot"] == str(tmp_path / "go.png") and (tmp_path / "go.png").read_bytes()[:4] == b"\x89PNG"
    assert all(tree(run) == before[run] for run in runs)  # reads only
    shown = cli("compare", *runs, "--eval-dir", target, "--device", "cpu")
    text = " ".join(shown.stdout.split())
    assert shown.exit_code == 0 and "each group against group 0, on the same 24 images" in text and "domain-labels go" in text
    again = cli("compare", *runs, "--eval-dir", target, "--plot", tmp_path / "go.png")  # a figure is never overwritten
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("make, words", [
    (lambda runs, tmp: [runs[("fixed", 0)]], "compare takes two runs or more"),
    (lambda runs, tmp: [runs[("fixed", 0)], runs[("fixed", 0)]], "a run is named twice"),
    (lambda runs, tmp: [runs[("fixed", 0)], tmp], "holds no config.yaml: compare reads finished runs"),
    (lambda runs, tmp: [runs[("fixed", 0)], tmp / "nowhere"], "does not exist"),
], ids=["one", "twice", "unfinished", "missing"])
def test_compare_refuses_what_it_cannot_compare(four_runs, tmp_path, make, words):
    result = cli("compare", *make(four_runs, tmp_path))
    assert result.exit_code == 2
    one_error_line(result, words)


def test_a_plot_needs_labels(four_runs, tmp_path):
    result = cli("compare", four_runs[("fixed", 0)], four_runs[("go", 0)], "--plot", tmp_path / "x.png")
    assert result.exit_code == 2
    one_error_line(result, "--plot draws accuracies, which need --eval-dir")
    assert not (tmp_path / "x.png").exists()


def test_the_paired_test_tells_a_real_difference_from_none():
    from golabels_cli.compare import bootstrap_means, interval, permutation_p

    rng = np.random.default_rng(0)
    better = rng.random(300) < 0.8
    worse = better & (rng.random(300) < 0.8)  # right on a subset of the same images: 16 points lower
    difference = better.astype(float) - worse.astype(float)
    assert permutation_p(difference, 2000, 0) < 0.01
    assert permutation_p(np.zeros(300), 2000, 0) == 1.0
    noise = (rng.random(300) < 0.5).astype(float) - (rng.random(300) < 0.5).astype(float)
    assert permutation_p(noise, 2000, 0) > 0.01
    low, high = interval(bootstrap_means(difference[None, :], 2000, 0)[0])
    assert 0 < low < difference.mean() < high


def test_a_search_says_which_candidates_go_labels_reach(domains, tmp_path):
    result = cli("adapt", *domains, *TINY, *FROZEN, "--search-recipes", "cdan-e+bnm,mcc", "--search-pick", "ensemble", "--domain-labels",
                 "go", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "--domain-labels go acts on a discriminator: it reaches 1 of the candidates (cdan-e+bnm); the others have none" in result.stderr
