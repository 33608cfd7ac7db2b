"""The label-shift remedies (issues 36-38): the source drawn class-balanced, the target drawn by its
pseudo-labels, source images weighted by the estimated target prior; when each turns on by
default, that a resumed run with them equals an uninterrupted one, and their option errors."""

import pytest
import torch
from conftest import interrupt_at
from PIL import Image


def test_balanced_source_draws_every_class_equally_often():
    import itertools
    from collections import Counter

    from golabels_cli.data import BalancedDraws

    labels = [0] * 200 + [1] * 20 + [2] * 4  # imbalance 50:1
    draws = list(itertools.islice(iter(BalancedDraws(labels, seed=0, stream=0)), 30000))
    per_class = Counter(labels[d.index] for d in draws)
    for c in range(3):
        assert abs(per_class[c] / len(draws) - 1 / 3) < 0.015, per_class  # uniform within 1.5 points
    # inside a class, every image as often as the others (each class is an endless shuffle)
    small = Counter(d.index for d in draws if labels[d.index] == 2)
    assert set(small) == {220, 221, 222, 223} and max(small.values()) - min(small.values()) <= 1
    assert len({d.seed for d in draws}) == len(draws)
    # resuming and ranks: slices of one global sequence
    resumed = list(itertools.islice(iter(BalancedDraws(labels, 0, 0, start=1000)), 50))
    assert [d.index for d in resumed] == [d.index for d in draws[1000:1050]]
    # far into the sequence (whole blocks of draws are skipped without being made), for each of 3 ranks
    long = list(itertools.islice(iter(BalancedDraws(labels, 0, 0)), 3 * 3000 + 30))
    for r in range(3):
        resumed = list(itertools.islice(iter(BalancedDraws(labels, 0, 0, start=3000, rank=r, world=3)), 10))
        assert [(d.index, d.seed) for d in resumed] == [(d.index, d.seed) for d in long[9000 + r::3]]
    ranks = [list(itertools.islice(iter(BalancedDraws(labels, 0, 0, start=10, rank=r, world=2)), 20)) for r in (0, 1)]
    assert [d.index for d in ranks[0]] == [d.index for d in draws[20:60:2]]
    assert [d.index for d in ranks[1]] == [d.index for d in draws[21:61:2]]


def test_adapt_with_balanced_source_sampling(domains, tmp_path):
    import json

    import yaml
    from conftest import adapt_tiny, cli

    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "4", "--balance-source")
    assert yaml.safe_load((run / "config.yaml").read_text())["balance-source"] is True
    frozen = adapt_tiny(source, target, tmp_path / "frozen", "--iters", "4", "--balance-source", "--freeze-backbone",
                        "--method", "cdan-e+bnm", "--balance-target", "--label-shift-weights", "--refresh-every", "2")
    assert (frozen / "model.safetensors").is_file()
    summary = json.loads((frozen / "summary.json").read_text())
    assert summary["target_estimate"]["iter"] == 2 and sum(summary["target_estimate"]["pseudo_label_counts"]) == 24
    report = cli("report", frozen, "--no-plots")
    assert report.exit_code == 0, report.stderr
    text = " ".join(report.stdout.replace("│", " ").split())  # wrapped table cells read as one line
    assert "--balance-source --balance-target --label-shift-weights (estimates every 2 iterations)" in text
    assert "target estimate" in text and "iteration 2: most frequent" in text and "source class weights" in text


def test_an_imbalanced_source_turns_the_balancing_on_for_adversarial_methods(tmp_path):
    from golabels_cli.config import build_config, load_yaml, resolve_balancing

    def balanced(imbalanced, values=None, **kw):
        cfg = build_config(values or {"source": "s", "target": "t", "iters": 1000, **kw})
        resolve_balancing(cfg, imbalanced)
        return cfg.balance_source, cfg.balance_target

    assert balanced(True) == (True, True)  # cdan-e, the default method
    assert balanced(True, method="dann") == (True, True)
    assert balanced(False) == (False, False)  # a balanced source: trained as it is
    assert balanced(True, method="source-only") == (False, False)  # the baseline keeps the source's frequencies
    assert balanced(True, iters=100) == (True, False)  # never reaches its first target estimate: drawn as it is
    assert balanced(True, balance_source=False) == (False, True)
    assert balanced(False, balance_source=True, balance_target=True) == (True, True)
    assert balanced(True, method="source-only", balance_source=True) == (True, False)
    # what it decided is returned, for the report to say which options the user did not ask for
    cfg = build_config({"source": "s", "target": "t", "balance_source": True})
    assert resolve_balancing(cfg, True) == ["--balance-target"]
    assert resolve_balancing(build_config({"source": "s", "target": "t"}), False) == []
    from golabels_cli.remedies import remedy_hint
    assert remedy_hint(["--balance-source"]).startswith("this run uses --balance-source: compare")
    assert "--balance-target by default on a source imbalanced above 3:1; --no-balance-target to train without" in remedy_hint(
        ["--balance-source", "--balance-target"], ["--balance-target"])
    (tmp_path / "c.yaml").write_text("source: s\ntarget: t\nbalance-target: false\n")
    assert balanced(True, load_yaml(tmp_path / "c.yaml")) == (True, False)


def test_the_balancing_decided_is_written_out_and_can_be_forced(domains, tmp_path):
    import yaml
    from conftest import adapt_tiny

    source, target = domains  # balanced

    def config(run):
        return yaml.safe_load((run / "config.yaml").read_text())

    plain = config(adapt_tiny(source, target, tmp_path / "plain", "--iters", "4", "--refresh-every", "2"))
    assert plain["balance-source"] is False and plain["balance-target"] is False  # resolved, so a replay or resume does the same
    forced = config(adapt_tiny(source, target, tmp_path / "forced", "--iters", "4", "--refresh-every", "2", "--balance-source",
                               "--balance-target"))
    assert forced["balance-source"] is True and forced["balance-target"] is True


def test_class_weights_reweight_the_trained_prior_to_the_target_prior():
    from golabels_cli.label_shift import class_weights

    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.1, 0.3, 0.6])
    w = class_weights(q, p)
    assert torch.allclose(w, q / p, atol=1e-6)  # uncapped: exactly the importance ratio
    assert torch.allclose((p * w).sum(), torch.tensor(1.0))
    capped = class_weights(torch.tensor([0.01, 0.01, 0.98]), torch.tensor([0.49, 0.49, 0.02]), cap=10.0)
    ratio = torch.tensor([0.1, 0.1, 10.0])  # 0.02x and 49x clipped to [1/10, 10]
    assert torch.allclose(capped, ratio / (torch.tensor([0.49, 0.49, 0.02]) * ratio).sum(), atol=1e-6)
    assert torch.allclose(class_weights(p, p), torch.ones(3))


SHIFT_RUN = ["--iters", "12", "--refresh-every", "4", "--no-balance-source", "--balance-target", "--label-shift-weights", "--save-every",
             "4"]


def test_target_estimates_refresh_the_target_sampler_and_source_weights(domains, tmp_path, monkeypatch):
    import json

    from conftest import adapt_tiny

    from golabels_cli import data
    from golabels_cli.training import loop

    balanced_by = []
    real = data.BalancedDraws.__init__

    def spy(self, labels, seed, stream, start=0, rank=0, world=1):
        balanced_by.append((stream, start, list(labels)))
        real(self, labels, seed, stream, start, rank, world)

    monkeypatch.setattr(data.BalancedDraws, "__init__", spy)
    weights_seen = []
    real_step = loop.Step.__call__

    def step_spy(self, xs, ys, xt, coeff, class_weights=None, target_index=None):
        weights_seen.append(None if class_weights is None else class_weights.tolist())
        return real_step(self, xs, ys, xt, coeff, class_weights, target_index)

    monkeypatch.setattr(loop.Step, "__call__", step_spy)
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", *SHIFT_RUN)
    summary = json.loads((run / "summary.json").read_text())
    estimate = summary["target_estimate"]
    assert estimate["iter"] == 8 and sum(estimate["pseudo_label_counts"]) == summary["images"]["target"] == 24
    assert len(estimate["class_weights"]) == 3 and abs(sum(estimate["target_prior"]) - 1) < 1e-3
    # the target sampler was rebuilt at steps 4 and 8 over the pseudo-labels of that moment, at the draw it had reached
    assert [(stream, start) for stream, start, _ in balanced_by] == [(1, 16), (1, 32)]
    assert [balanced_by[-1][2].count(c) for c in range(3)] == estimate["pseudo_label_counts"]
    # source weights: none before the first estimate, then that estimate's
    assert weights_seen[:4] == [None] * 4
    assert all(torch.allclose(torch.tensor(w), torch.tensor(estimate["class_weights"]), rtol=1e-5) for w in weights_seen[8:])
    assert weights_seen[4] is not None and weights_seen[4] == weights_seen[7]


@pytest.mark.parametrize("remedies", [("balance_target", "label_shift_weights"), ("balance_target",)])
def test_a_resumed_run_with_target_estimates_equals_an_uninterrupted_one(domains, tmp_path, remedies):

    from conftest import adapt_tiny
    from safetensors.torch import load_file

    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted

    source, target = domains
    flags = [f"--{name.replace('_', '-')}" for name in remedies]
    whole = adapt_tiny(source, target, tmp_path / "whole", "--iters", "12", "--refresh-every", "4", "--save-every", "4", *flags)
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 12, "refresh_every": 4, "save_every": 4,
                        **{name: True for name in remedies}})

    interrupt = interrupt_at(6)  # handled after the step: saved at iteration 6, between two estimates

    with pytest.raises(Interrupted):
        training.adapt(cfg, out=tmp_path / "cut", progress=interrupt)
    training.resume(tmp_path / "cut")
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("args, message", [
    (["--method", "source-only", "--balance-target"], "--balance-target draws the target batches"),
    (["--label-shift-weights", "--iters", "100"], "--label-shift-weights acts from the first target estimate, at iteration --refresh-every "
                                                  "100"),
    (["--balance-target", "--refresh-every", "0"], "--refresh-every must be a positive integer"),
])
def test_bad_remedy_options_are_one_line_errors(domains, tmp_path, args, message):
    from conftest import TINY, cli

    source, target = domains
    result = cli("adapt", source, target, *TINY, *args, "--out", tmp_path / "run")
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# the confusion of a sample of the training source (nothing held out), of cached features, of the held-out split
@pytest.mark.parametrize("args",
                         [["--val-split", "0"], ["--val-split", "0", "--freeze-backbone", "--method", "cdan-e+bnm"],
                          ["--val-split", "0.25"]])
def test_label_shift_weights_follow_the_smoothed_bbse_estimate(domains, tmp_path, monkeypatch, args):
    import json

    from conftest import adapt_tiny

    from golabels_cli.label_shift import class_weights
    from golabels_cli.training import target_estimate

    estimates, labeled = [], []
    real = target_estimate.bbse_prior

    def spy(source_probs, source_labels, target_probs):
        labeled.append(len(source_labels))
        estimates.append(real(source_probs, source_labels, target_probs))
        return estimates[-1]

    monkeypatch.setattr(target_estimate, "bbse_prior", spy)
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "12", "--refresh-every", "4", "--no-balance-source",
                     "--label-shift-weights", *args)
    estimate = json.loads((run / "summary.json").read_text())["target_estimate"]
    assert len(estimates) == 2  # at steps 4 and 8
    assert labeled == ([6, 6] if "0.25" in args else [24, 24])  # 2 of 8 per class held out, or every training image
    p = torch.tensor([1 / 3] * 3)  # the tiny source is balanced, and so is what a stratified split leaves
    expected = 0.25 * p + 0.25 * estimates[0] + 0.5 * estimates[1]
    assert torch.allclose(torch.tensor(estimate["target_prior"]), expected, atol=2e-4)
    # (the prior is stored to 4 decimals; the weights are of the unrounded one)
    assert torch.allclose(torch.tensor(estimate["class_weights"]), class_weights(torch.tensor(estimate["target_prior"]), p), atol=1e-3)


@pytest.mark.parametrize("counts, balanced", [((12, 8, 4), False), ((13, 8, 4), True)])
def test_the_default_balancing_starts_above_the_imbalance_threshold(tmp_path, counts, balanced):
    import yaml
    from conftest import TINY, cli

    from golabels_cli.remedies import IMBALANCE_WARNING

    assert 12 / 4 <= IMBALANCE_WARNING < 13 / 4  # the two sources sit on either side of it
    for cls, n in zip("abc", counts):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (20 * i, 80 * "abc".index(cls), 0)).save(tmp_path / "src" / cls / f"{i}.png")
    (tmp_path / "tgt").mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), (0, 0, 40 * i)).save(tmp_path / "tgt" / f"{i}.png")
    result = cli("adapt", tmp_path / "src", tmp_path / "tgt", *TINY, "--iters", "4", "--refresh-every", "2", "--val-split", "0",
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["balance-source"] is balanced and config["balance-target"] is balanced
    assert (f"imbalanced {counts[0] / 4:.1f}:1" in result.stderr) is balanced  # warned about exactly when balanced
