"""Issue 7: unsupervised validators, --select, the data report and `golabels report`."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, cli_subprocess, interrupt_at, read_jsonl
from golabels_cli import training
from golabels_cli.training import loop
from golabels_cli.config import build_config
from golabels_cli.data import data_report, scan_labeled, scan_unlabeled, stratified_split
from golabels_cli.errors import Interrupted
from golabels_cli.report import correlations, spearman
from golabels_cli.validators import (Outputs, compute_validators, deep_embedded_validation, domain_density_ratio,
                                     information_maximization, mean_entropy, soft_neighborhood_density)


def one_hot_probs(classes, n_classes, confidence=0.97):
    p = torch.full((len(classes), n_classes), (1 - confidence) / (n_classes - 1))
    p[torch.arange(len(classes)), torch.tensor(classes)] = confidence
    return p


# ---- the validators on hand-made outputs --------------------------------------------------------


def test_snd_is_higher_for_clustered_than_for_scattered_target_outputs():
    g = torch.Generator().manual_seed(0)
    # 200 samples in 4 tight clusters of confident predictions vs. 200 predictions scattered at random
    clustered = one_hot_probs([i % 4 for i in range(200)], 4) + 0.01 * torch.rand(200, 4, generator=g)
    clustered = clustered / clustered.sum(1, keepdim=True)
    scattered = torch.rand(200, 4, generator=g) ** 4
    scattered = scattered / scattered.sum(1, keepdim=True)
    assert soft_neighborhood_density(clustered) > soft_neighborhood_density(scattered) + 0.5
    assert math.isnan(soft_neighborhood_density(clustered[:1]))


def test_entropy_and_information_maximization_rank_confident_diverse_predictions_first():
    confident_diverse = one_hot_probs([i % 5 for i in range(100)], 5)
    confident_collapsed = one_hot_probs([0] * 100, 5)  # every target image called class 0
    uncertain = torch.full((100, 5), 0.2)
    assert mean_entropy(confident_diverse) == pytest.approx(mean_entropy(confident_collapsed))
    assert mean_entropy(confident_diverse) < mean_entropy(uncertain)
    assert mean_entropy(uncertain) == pytest.approx(math.log(5), abs=1e-6)
    # IM tells diverse from collapsed, which entropy alone cannot
    assert information_maximization(confident_diverse) > information_maximization(confident_collapsed) + 1.0
    assert information_maximization(uncertain) == pytest.approx(0.0, abs=1e-6)


def test_density_ratio_recovers_a_known_shift():
    # source N(0, 1), target N(1, 1): p_t(x) / p_s(x) = exp(x - 1/2)
    g = torch.Generator().manual_seed(0)
    source = torch.randn(4000, 1, generator=g)
    target = torch.randn(4000, 1, generator=g) + 1.0
    query = torch.tensor([[-1.0], [0.0], [0.5], [1.0], [2.0]])
    ratio = domain_density_ratio(source, target, query)
    expected = torch.exp(query[:, 0] - 0.5)
    assert torch.allclose(ratio.float(), expected, rtol=0.15)


def test_dev_is_lower_when_the_errors_lie_where_the_target_is_not():
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(500, generator=g) * 2  # density ratios
    small = torch.full((500,), 0.1)
    # the same mean loss, put on the target-like samples or on the source-like ones
    errors_on_target = torch.where(weights > 1, 1.0, 0.1)
    errors_off_target = torch.where(weights <= 1, 1.0, 0.1)
    assert deep_embedded_validation(weights, errors_off_target) < deep_embedded_validation(weights, errors_on_target)
    assert deep_embedded_validation(weights, small) == pytest.approx(0.1, abs=1e-6)
    # with every weight 1 (no shift) DEV is the plain validation loss
    assert deep_embedded_validation(torch.ones(50), torch.arange(50.0)) == pytest.approx(24.5)


def test_compute_validators_and_src_acc():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])
    out = Outputs(logits, torch.tensor([0, 1, 1, 1]), torch.randn(4, 8, generator=g), torch.randn(20, 8, generator=g),
                  torch.randn(30, 2, generator=g), torch.randn(30, 8, generator=g))
    values = compute_validators(out)
    assert values["src_acc"] == 0.75 and set(values) == {"src_acc", "entropy", "im", "snd", "dev"}
    assert all(isinstance(v, float) for v in values.values())
    no_split = compute_validators(Outputs(None, None, None, None, out.target_logits, out.target_features))
    assert no_split["src_acc"] is None and no_split["dev"] is None and no_split["snd"] == values["snd"]


def test_spearman_and_correlations():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9487, abs=1e-4)  # ties share their mean rank
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    pairs = [(0.5, 1.0), (0.6, 0.8), (0.7, 0.5), (0.75, 0.4), (0.8, 0.3)]
    evals = [{"iter": i, "target_acc": a, "entropy": e, "snd": None} for i, (a, e) in enumerate(pairs)]
    rho = correlations(evals)
    assert rho["entropy"] == 1.0  # lower entropy, higher accuracy: a perfect validator once oriented
    assert rho["snd"] is None and rho["dev"] is None
    # from 4 snapshots a rank correlation is mostly noise: not given
    assert correlations(evals[:4])["entropy"] is None


# ---- the split and the data report --------------------------------------------------------------


def test_stratified_split_holds_out_each_class_and_never_its_last_image():
    labels = [0] * 50 + [1] * 10 + [2] * 1 + [3] * 3
    train_idx, val_idx = stratified_split(labels, 0.1, seed=0)
    held = [labels[i] for i in val_idx]
    assert held.count(0) == 5 and held.count(1) == 1 and held.count(2) == 0 and held.count(3) == 0
    assert sorted(train_idx + val_idx) == list(range(len(labels))) and not set(train_idx) & set(val_idx)
    assert stratified_split(labels, 0.1, seed=0) == (train_idx, val_idx)
    assert stratified_split(labels, 0.1, seed=1)[1] != val_idx
    assert stratified_split(labels, 0.0, seed=0) == (list(range(len(labels))), [])
    # never a class's last training image, whatever the fraction
    assert [labels[i] for i in stratified_split(labels, 0.9, seed=0)[0]].count(2) == 1


def test_data_report_warns_about_small_and_imbalanced_classes(tmp_path):
    from PIL import Image

    for cls, n in (("big", 60), ("mid", 12), ("tiny", 3)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40 + i % 3, 30), (i, 0, 0)).save(tmp_path / "src" / cls / f"{i}.png")
    (tmp_path / "tgt").mkdir()
    for i in range(5):
        Image.new("RGB", (64, 64)).save(tmp_path / "tgt" / f"{i}.png")
    source, target = scan_labeled(tmp_path / "src"), scan_unlabeled(tmp_path / "tgt")
    report = data_report(source, target, stratified_split(source.labels, 0.1, 0)[1])
    assert report["source_per_class"] == {"big": 60, "mid": 12, "tiny": 3}
    assert report["held_out_per_class"] == {"big": 6, "mid": 1, "tiny": 0}
    assert report["imbalance_ratio"] == 20.0 and report["target_images"] == 5
    assert report["source_sizes"] == {"width": [40, 41, 42], "height": [30, 30, 30]}
    assert report["target_sizes"] == {"width": [64, 64, 64], "height": [64, 64, 64]}
    assert len(report["warnings"]) == 2
    assert "'tiny' (3)" in report["warnings"][0] and "20.0:1" in report["warnings"][1]
    assert "try --balance-source --balance-target" in report["warnings"][1]
    # the same report starts an adapt run, warnings on stderr, and lands in summary.json
    result = cli("adapt", tmp_path / "src", tmp_path / "tgt", *TINY, "--iters", "2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "fewer than 5 images" in result.stderr and "imbalanced 20.0:1" in result.stderr
    assert "source: 75 images in 3 classes" in result.stderr and "7 held out for validation" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["warnings"][0] == report["warnings"][0] and "this run uses" in summary["data"]["warnings"][1]
    assert summary["images"]["source_val"] == 7
    # imbalanced above 3:1, the run balances the source by default (too short to balance the target), says so,
    # and is told to check the result
    assert ("this run uses --balance-source, the default on a source imbalanced above 3:1 "
            "(--no-balance-source to train without): compare it with --method source-only") in " ".join(result.stderr.split())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["balance-source"] is True and config["balance-target"] is False
    assert "try --balance-source" not in result.stderr
    plain = cli("adapt", tmp_path / "src", tmp_path / "tgt", *TINY, "--iters", "2", "--no-balance-source", "--out", tmp_path / "plain")
    assert plain.exit_code == 0, plain.stderr
    hint = "try --balance-source --balance-target (an adversarial --method's default when the source is imbalanced above 3:1)"
    assert hint in plain.stderr


# ---- validators in a run, and --select ------------------------------------------------------------


def spy_snapshots(monkeypatch, scripted=None):
    """Record the model's weights at every evaluation; optionally replace the validators' values."""
    snapshots = {}
    real = loop.validate

    def spy(t, state):
        scores = real(t, state)
        it = len(snapshots)
        snapshots[it] = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
        if scripted is not None:
            scores.update(scripted[it])
        return scores

    monkeypatch.setattr(loop, "validate", spy)
    return snapshots


def assert_weights_equal(run, state):
    """The shipped model is that snapshot, bit for bit (with --bn-stats train: --bn-stats target
    would ship its BatchNorm statistics re-estimated, tests/test_bn_stats.py)."""
    shipped = load_file(str(Path(run) / "model.safetensors"))
    for k, v in shipped.items():
        assert torch.equal(v, state[k]), k


def test_eval_every_logs_every_validator_and_select_snd_ships_that_snapshot(domains, tmp_path, monkeypatch):
    source, target = domains
    snapshots = spy_snapshots(monkeypatch)
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "40", "--eval-every", "10", "--select", "snd", "--bn-stats", "train",
                     "--eval-dir", target)
    summary = json.loads((run / "summary.json").read_text())
    evals = summary["evals"]
    assert [e["iter"] for e in evals] == [10, 20, 30, 40] and len(snapshots) == 4
    for e in evals:
        assert {"src_acc", "entropy", "im", "snd", "dev", "target_acc"} <= e.keys()
        assert all(isinstance(e[k], float) for k in ("src_acc", "entropy", "im", "snd", "dev"))
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "snd" in r]
    assert [r["iter"] for r in rows] == [10, 20, 30, 40] and [r["snd"] for r in rows] == [e["snd"] for e in evals]
    best = max(evals, key=lambda e: e["snd"])
    assert summary["selected"] == {"by": "snd", "iter": best["iter"], "value": best["snd"]}
    assert summary["target_acc"] == best["target_acc"]
    assert_weights_equal(run, snapshots[evals.index(best)])
    assert summary["images"]["source_val"] == 3 and summary["images"]["source"] == 21


def test_select_keeps_an_early_snapshot_and_last_keeps_the_last(domains, tmp_path, monkeypatch):
    source, target = domains
    falling = [{"im": v} for v in (0.9, 0.5, 0.7, 0.1)]  # best at the first evaluation
    snapshots = spy_snapshots(monkeypatch, falling)
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "40", "--eval-every", "10", "--select", "im", "--bn-stats", "train")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected"] == {"by": "im", "iter": 10, "value": 0.9}
    assert_weights_equal(run, snapshots[0])
    assert not all(torch.equal(snapshots[0][k], snapshots[3][k]) for k in snapshots[0])
    # the checkpoint keeps training's last weights (for --resume), the selected ones beside them
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ckpt["model"][k], snapshots[3][k]) for k in snapshots[3])
    assert all(torch.equal(ckpt["selected_model"][k], snapshots[0][k]) for k in snapshots[0])

    monkeypatch.undo()
    snapshots = spy_snapshots(monkeypatch)
    run = adapt_tiny(source, target, tmp_path / "last", "--iters", "40", "--eval-every", "10", "--bn-stats", "train")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected"] == {"by": "last", "iter": 40, "value": None}
    assert_weights_equal(run, snapshots[3])


def test_a_resumed_run_selects_the_same_snapshot(domains, tmp_path, monkeypatch):
    source, target = domains
    options = ["--iters", "40", "--eval-every", "10", "--select", "dev", "--save-every", "10"]
    whole = adapt_tiny(source, target, tmp_path / "whole", *options)
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 40, "eval_every": 10, "select": "dev", "save_every": 10})

    interrupt = interrupt_at(25)  # handled after the step: the state is saved at iteration 25

    with pytest.raises(Interrupted):
        training.adapt(cfg, out=tmp_path / "cut", progress=interrupt)
    training.resume(tmp_path / "cut")
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert a["selected"] == b["selected"] and a["evals"] == b["evals"]
    assert_weights_equal(tmp_path / "cut", load_file(str(whole / "model.safetensors")))


@pytest.mark.parametrize("args, message", [
    (["--select", "snd"], "add --eval-every"),
    (["--select", "target-acc", "--eval-every", "5"], "needs target labels"),
    (["--select", "dev", "--eval-every", "5", "--val-split", "0"], "needs held-out source images"),
    (["--select", "best"], "unknown select 'best'"),
    (["--val-split", "1"], "--val-split must be in [0, 1)"),
])
def test_bad_selection_options_are_one_line_errors(domains, tmp_path, args, message):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--iters", "5", "--out", tmp_path / "run", *args)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ---- golabels report --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated_run(domains, tmp_path_factory):
    source, target = domains
    return adapt_tiny(source, target, tmp_path_factory.mktemp("report") / "run", "--iters", "30", "--eval-every", "6",
                      "--eval-dir", target, "--select", "im", "--log-every", "3")


def test_report_prints_tables_and_writes_plots(evaluated_run):
    pytest.importorskip("matplotlib")
    result = cli("report", evaluated_run)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for text in ("cdan-e with fixed domain labels", "iteration", "(--select im)", "source images per class", "circle",
                 "validators per evaluated snapshot", "target-acc", "↑ higher is better", "↓", "Spearman correlation", "environment"):
        assert text in out, text
    for name in ("report-losses.png", "report-discriminator.png", "report-validators.png"):
        data = (evaluated_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "plots:" in result.stderr
    as_json = json.loads(cli("report", evaluated_run, "--json", "--no-plots").stdout)
    assert as_json["finished"] and len(as_json["evals"]) == 5 and set(as_json["correlations"]) == {"src_acc", "entropy", "im", "snd", "dev"}
    assert as_json["summary"]["environment"]["torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_report_without_matplotlib_prints_tables_and_says_how_to_get_plots(evaluated_run, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    # a matplotlib package that cannot be imported, first on the path
    (blocker / "matplotlib").mkdir()
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    for name in ("report-losses.png", "report-discriminator.png", "report-validators.png"):
        (evaluated_run / name).unlink(missing_ok=True)
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = cli_subprocess("report", evaluated_run, env=env)
    assert result.returncode == 0, result.stderr
    assert "validators per evaluated snapshot" in result.stdout
    assert "pip install 'golabels[plots]'" in result.stderr
    assert not list(evaluated_run.glob("report-*.png"))


def test_report_on_an_interrupted_run_and_on_bad_input(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "20", "--eval-every", "10")
    (run / "summary.json").unlink()  # as if the run had stopped before its end
    result = cli("report", run, "--no-plots")
    assert result.exit_code == 0, result.stderr
    assert "not finished" in result.stdout and "--resume" in result.stdout and "validators per evaluated snapshot" in result.stdout
    missing = cli("report", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = cli("report", tmp_path / "empty")
    assert empty.exit_code == 2 and "not a golabels run directory" in empty.stderr


def test_the_summary_says_which_iteration_each_figure_is_of():
    from golabels_cli import console, tables

    summary = {
        "run_dir": "runs/adapt/exp", "method": "cdan-e", "domain_labels": "fixed", "bn_stats": "target", "backbone": "resnet50",
        "device": "cpu", "iters": 300, "seconds": 10.0, "images_per_s": 100.0,
        "images": {"source": 10, "target": 10, "eval": 0}, "skipped": {"source": 0, "target": 0, "eval": 0},
        "final": {"loss_cls": 0.1, "loss_adv": 0.6, "disc_acc": 0.6, "relabeled_src": 0.0, "relabeled_tgt": 0.0, "adv_grad_norm": 0.1},
        "selected": {"by": "snd", "iter": 100, "value": 3.0},
        "evals": [{"iter": 100, "snd": 3.0}, {"iter": 300, "snd": 2.0}], "target_acc": None,
    }
    with console.stdout.capture() as captured:
        tables.print_adapt_summary(summary)
    text = " ".join(captured.get().replace("│", " ").split())  # cells wrap inside the table
    assert "adversarial 0.600 (iteration 300)" in text and "(iteration 100, the shipped snapshot)" in text
    assert "BatchNorm statistics of the target" in text
