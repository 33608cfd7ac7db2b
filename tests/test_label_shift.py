"""The long-tail writer, the estimates of a target's class distribution (EM, BBSE) and the
label-shift warning (issue 10 and after); the remedies that act on a shift are test_balancing.py's."""

import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from golabels_cli.label_shift import bbse_prior, em_prior, total_variation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import longtail  # noqa: E402


def test_long_tail_counts_follow_the_formula(tmp_path):
    src = tmp_path / "src"
    for c in range(5):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(100):
            Image.new("L", (8, 8), i).save(src / f"c{c}" / f"{i}.png")
    head = longtail.write_longtail(src, tmp_path / "head", ratio=20, order="head-first", seed=0)
    expected = [max(5, math.floor(100 * 20 ** (-k / 4) + 0.5)) for k in range(5)]
    assert list(head.values()) == expected == [100, 47, 22, 11, 5]
    tail = longtail.write_longtail(src, tmp_path / "tail", ratio=20, order="tail-first", seed=0)
    assert list(tail.values()) == expected[::-1]
    for c, n in head.items():
        files = sorted((tmp_path / "head" / c).iterdir())
        assert len(files) == n
        assert all(f.stat().st_ino == (src / c / f.name.split("-", 1)[1]).stat().st_ino for f in files)  # links, not copies
    # at least 5 per class, however steep; an existing output is never touched
    assert min(longtail.kept_counts([30, 30, 30], ratio=1000, order="head-first")) == 5
    with pytest.raises(SystemExit, match="already exists"):
        longtail.write_longtail(src, tmp_path / "head", ratio=20, order="head-first", seed=0)
    assert longtail.write_longtail(src, tmp_path / "again", 20, "head-first", 0) == head
    # --like: the largest subset in another folder's class proportions (here the head-first copy's)
    like = longtail.write_longtail(tmp_path / "tail", tmp_path / "like", None, "head-first", 0, like=tmp_path / "head")
    assert list(like.values()) == [longtail.math.floor(5 / 100 * n + 1e-9) for n in expected] == [5, 2, 1, 0, 0]
    assert longtail.matched_counts([1553, 1269], [980, 1135]) == [1095, 1269]
    for bad in (dict(ratio=20, like=tmp_path / "head"), dict(ratio=None), dict(ratio=None, like=tmp_path / "head" / "c0")):
        with pytest.raises(SystemExit, match="--ratio or --like|same class folders"):
            longtail.write_longtail(src, tmp_path / "bad", order="head-first", seed=0, **bad)
    assert not (tmp_path / "bad").exists()


def gaussian_posteriors(prior: torch.Tensor, n: int, source_prior: torch.Tensor, seed: int):
    """Samples of 3 classes (1-D Gaussians at -2, 0, 2) drawn with `prior`, and the exact posteriors
    a classifier trained under `source_prior` would give them."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([-2.0, 0.0, 2.0])
    y = torch.multinomial(prior, n, replacement=True, generator=g)
    x = means[y] + torch.randn(n, generator=g)
    likelihood = torch.exp(-0.5 * (x[:, None] - means[None]) ** 2)
    post = likelihood * source_prior
    return post / post.sum(1, keepdim=True), y


def test_prior_estimators_recover_a_known_label_shift():
    source_prior = torch.tensor([0.6, 0.3, 0.1])
    target_prior = torch.tensor([0.1, 0.3, 0.6])
    target_probs, _ = gaussian_posteriors(target_prior, 20000, source_prior, seed=0)
    q = em_prior(target_probs, source_prior)
    assert torch.allclose(q, target_prior, atol=0.03), q
    # no shift: the estimate stays at the source prior
    same, _ = gaussian_posteriors(source_prior, 20000, source_prior, seed=1)
    assert total_variation(em_prior(same, source_prior), source_prior) < 0.03
    # BBSE from held-out source images, with hard predictions (one-hot) and with soft ones
    val_probs, val_labels = gaussian_posteriors(source_prior, 20000, source_prior, seed=2)
    hard = torch.nn.functional.one_hot
    q = bbse_prior(hard(val_probs.argmax(1), 3).float(), val_labels, hard(target_probs.argmax(1), 3).float())
    assert torch.allclose(q, target_prior, atol=0.05), q
    assert torch.allclose(bbse_prior(val_probs, val_labels, target_probs), target_prior, atol=0.05)
    assert total_variation(target_prior, source_prior) == pytest.approx(0.5)


def test_runs_log_the_estimated_target_distribution_and_warn_once_on_a_strong_shift(domains, tmp_path, caplog):
    import json
    import logging
    from types import SimpleNamespace

    from conftest import adapt_tiny, read_jsonl
    from golabels_cli.training import LoopState
    from golabels_cli.training.target_estimate import warn_on_label_shift

    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "20", "--eval-every", "10")
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "prior_shift" in r]
    assert [r["iter"] for r in rows] == [10, 20]
    for r in rows:
        assert len(r["target_prior"]) == 3 and abs(sum(r["target_prior"]) - 1) < 1e-3 and 0 <= r["prior_shift"] <= 1
        # the share of the 24 target images the model predicts as each class
        assert len(r["predicted_share"]) == 3 and all(abs(v * 24 - round(v * 24)) < 0.01 for v in r["predicted_share"])
    assert json.loads((run / "summary.json").read_text())["evals"][-1]["prior_shift"] == rows[-1]["prior_shift"]

    def warnings_for(method, labels, eval_set=None, p_value=1e-6, src_acc=None, held_out=1000):
        """The label-shift warnings of a run whose evaluations read these shifts of the predictions."""
        cfg = SimpleNamespace(iters=100, method=method, balance_source=False, balance_target=False, label_shift_weights=False)
        t = SimpleNamespace(source=SimpleNamespace(classes=["a", "b", "c"], labels=labels), cfg=cfg, eval_set=eval_set,
                            validation=SimpleNamespace(source_val=[None] * held_out))
        state = LoopState()
        caplog.clear()
        logging.getLogger("golabels").propagate = True
        try:
            with caplog.at_level(logging.WARNING, logger="golabels"):
                # a young model's reading (iteration 20 of 100) is not trusted, however far off;
                # EM's (prior_shift) does not decide, the shares of the predictions do
                for it, shift in ((20, 0.9), (50, 0.1), (60, 0.4), (80, 0.5)):
                    scores = {"iter": it, "prior_shift": 0.9, "target_prior": [0.1, 0.2, 0.7], "predicted_share": [0.2, 0.2, 0.6],
                              "predicted_shift": shift, "predicted_shift_p": p_value, "src_acc": src_acc}
                    state.evals.append(scores)
                    warn_on_label_shift(t, state, it, scores)
        finally:
            logging.getLogger("golabels").propagate = False
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "label shift" in r.getMessage()]

    imbalanced = [0] * 6 + [1] * 3 + [2]  # 6:1
    eval_images = SimpleNamespace(labels=[0, 1, 1, 2, 2, 2])  # the eval folder's own class order: a, b, c
    warnings = warnings_for("cdan-e", imbalanced, (eval_images, [0, 1, 2]))
    assert len(warnings) == 1 and "total variation 0.40" in warnings[0] and "\n" not in warnings[0]
    # the measured shift of --eval-dir's labels: (1/6, 2/6, 3/6) against (0.6, 0.3, 0.1)
    assert "the labels of --eval-dir differ from the source's by 0.43" in warnings[0]
    # the classes whose share of the predictions is furthest from their share of the source, largest first
    assert "'c' 60% vs 10%, 'a' 20% vs 60%, 'b' 20% vs 30%" in warnings[0]
    assert "try --balance-source --balance-target" in warnings[0] and "compare with --method source-only" in warnings[0]
    # --eval-dir's labels as frequent as the source's (0.6, 0.3, 0.1): they contradict the reading, so no warning.
    matching = SimpleNamespace(labels=[0] * 6 + [1] * 3 + [2])
    assert warnings_for("cdan-e", imbalanced, (matching, [0, 1, 2])) == []
    # On a balanced source no measurement supports balancing: the warning recommends only the comparison.
    balanced = warnings_for("dann", [0, 0, 1, 1, 2, 2])
    assert len(balanced) == 1 and "--eval-dir" not in balanced[0]
    assert "try --balance-source" not in balanced[0] and "compare with --method source-only" in balanced[0]
    # source-only aligns nothing: no warning about what alignment does.
    assert warnings_for("source-only", imbalanced) == []
    # A difference as large is likely by chance (a few held-out images): no warning.
    assert warnings_for("cdan-e", imbalanced, p_value=0.2) == []
    # A model near chance on the held-out source says nothing about the folders' classes: no warning.
    assert warnings_for("cdan-e", imbalanced, src_acc=0.6) == [] and len(warnings_for("cdan-e", imbalanced, src_acc=0.75)) == 1
    # Nor one that 3 held-out images vouch for: 3 of 3 right is not evidence enough.
    assert warnings_for("cdan-e", imbalanced, src_acc=1.0, held_out=3) == []


def test_shift_p_value_tells_a_shift_from_noise():
    from golabels_cli.label_shift import shift_p_value

    # 3 held-out images all predicted 'a' against 36 target images 24/8/4: likely by chance
    assert shift_p_value(torch.tensor([24.0, 8, 4]), torch.tensor([3.0, 0, 0])) > 0.1
    # the same shares at 100 times the counts: not by chance
    assert shift_p_value(torch.tensor([2400.0, 800, 400]), torch.tensor([300.0, 0, 0])) < 1e-6
    # identical shares: p = 1; a known prior instead of a second sample
    assert shift_p_value(torch.tensor([10.0, 10, 10]), torch.tensor([20.0, 20, 20])) == pytest.approx(1.0)
    assert shift_p_value(torch.tensor([100.0, 0, 0]), torch.tensor([1 / 3, 1 / 3, 1 / 3]), reference_is_prior=True) < 1e-6
    assert shift_p_value(torch.tensor([34.0, 33, 33]), torch.tensor([1 / 3, 1 / 3, 1 / 3]), reference_is_prior=True) > 0.9
    # the chi-square statistic's p-value, checked by hand: [[10, 20], [20, 10]] gives 6.667 on 1 df, p = 0.00982
    assert shift_p_value(torch.tensor([10.0, 20]), torch.tensor([20.0, 10])) == pytest.approx(0.00982, abs=1e-4)


def test_the_shift_is_read_against_the_models_own_predictions_on_held_out_source(domains, tmp_path):
    """A model that leans toward a class on both domains shows no label shift: predicted_shift
    compares the target's predicted shares with the held-out source's."""
    from conftest import adapt_tiny, read_jsonl

    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "10", "--eval-every", "10", "--val-split", "0.5")
    row = [r for r in read_jsonl(run / "metrics.jsonl") if "predicted_shift" in r][-1]
    share, held_out = row["predicted_share"], row["source_predicted_share"]
    assert len(held_out) == 3 and abs(sum(held_out) - 1) < 1e-3
    assert row["predicted_shift"] == pytest.approx(0.5 * sum(abs(a - b) for a, b in zip(share, held_out)), abs=1e-3)


def test_a_tiny_balanced_run_prints_no_label_shift_warning(tmp_path):
    from conftest import TINY, cli
    from golabels_cli.synthetic import make_two_domains

    source, target = make_two_domains(tmp_path / "data", per_class=12, size=32, seed=2)
    result = cli("adapt", source, target, *TINY, "--out", tmp_path / "run", "--iters", "40", "--eval-every", "10",
                 "--eval-dir", target)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert not [w for w in warnings if "label shift" in w or "class distribution" in w], warnings


def test_bbse_sees_through_a_miscalibrated_classifier_where_em_does_not():
    from golabels_cli.label_shift import moving_average

    # posteriors sharpened and tilted toward class 0, the same way on both domains: a young model's
    source_prior, target_prior = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.1, 0.3, 0.6])

    def miscalibrated(probs):
        tilted = probs ** 3 * torch.tensor([4.0, 1.0, 1.0])
        return tilted / tilted.sum(1, keepdim=True)

    target_probs, _ = gaussian_posteriors(target_prior, 20000, source_prior, seed=0)
    val_probs, val_labels = gaussian_posteriors(source_prior, 20000, source_prior, seed=2)
    assert total_variation(em_prior(miscalibrated(target_probs), source_prior), target_prior) > 0.1
    q = bbse_prior(miscalibrated(val_probs), val_labels, miscalibrated(target_probs))
    assert total_variation(q, target_prior) < 0.03, q
    # no shift: BBSE stays at the source prior; smoothing moves an estimate half way
    same, _ = gaussian_posteriors(source_prior, 20000, source_prior, seed=1)
    assert total_variation(bbse_prior(miscalibrated(val_probs), val_labels, miscalibrated(same)), source_prior) < 0.03
    assert torch.allclose(moving_average(source_prior, target_prior), torch.tensor([0.35, 0.3, 0.35]))
    assert torch.allclose(moving_average(source_prior, target_prior, momentum=0.0), target_prior)


def test_em_reads_the_weighted_classifier_under_the_prior_it_was_trained_to():
    """With --label-shift-weights the posteriors are calibrated to p * w, not to the drawn prior p:
    EM under p would read the weights' own bias as more of that class in the target (and the next
    weights would push further, the loop that collapsed Office-31 runs onto two classes)."""
    from types import SimpleNamespace

    from golabels_cli.training import LoopState
    from golabels_cli.training.target_estimate import trained_prior

    t = SimpleNamespace(cfg=SimpleNamespace(label_shift_weights=True, balance_source=False),
                        source=SimpleNamespace(labels=[0] * 6 + [1] * 3 + [2], classes=["a", "b", "c"]))
    state = LoopState(class_weights=[0.5, 1.0, 3.0])
    p = torch.tensor([0.6, 0.3, 0.1])
    assert torch.allclose(trained_prior(t, LoopState()), p)
    effective = p * torch.tensor([0.5, 1.0, 3.0])
    assert torch.allclose(trained_prior(t, state), effective / effective.sum())
    t.cfg.balance_source = True
    assert torch.allclose(trained_prior(t, state), torch.tensor([0.5, 1.0, 3.0]) / 4.5)
    t.cfg.label_shift_weights = False  # estimates made for --balance-target alone leave the prior alone
    assert torch.allclose(trained_prior(t, state), torch.full((3,), 1 / 3))

    # posteriors computed under the trained prior p*w of a target drawn with q: EM needs p*w to recover q
    generator = torch.Generator().manual_seed(0)
    likelihood = torch.rand(5000, 3, generator=generator) ** 4  # p(x | y) of 5000 target images
    q = torch.tensor([0.1, 0.3, 0.6])
    trained = effective / effective.sum()
    labels = torch.multinomial(q, 5000, replacement=True, generator=generator)
    likelihood[torch.arange(5000), labels] += 0.5  # each image looks most like its own class
    posteriors = likelihood * trained
    posteriors /= posteriors.sum(1, keepdim=True)
    assert total_variation(em_prior(posteriors, trained), q) < 0.05
    assert total_variation(em_prior(posteriors, p), q) > 0.15


def test_the_warning_needs_enough_held_out_images_to_trust_the_model():
    from golabels_cli.training.target_estimate import wilson_lower_bound

    # 3 of 3 held-out images right: the accuracy's 95% interval reaches down to 0.44, below the
    # 0.67 a 3-class model needs to be read (halfway from chance to 1); 291 of 300 clears it.
    assert wilson_lower_bound(1.0, 3) == pytest.approx(0.4385, abs=1e-4)
    assert wilson_lower_bound(0.97, 300) == pytest.approx(0.944, abs=1e-3)
    assert wilson_lower_bound(0.5, 0) == 0.0


def test_the_imbalance_warning_fits_the_recipe_that_runs(tmp_path):
    """Issue 45 item 7: the source-imbalance warning names what the run itself does about it, and
    stays silent for recipes without a discriminator, whose training it does not concern."""
    import subprocess
    import sys

    from golabels_cli.synthetic import make_two_domains

    source, target = make_two_domains(tmp_path / "data", per_class=12, size=32, seed=2)
    for extra in sorted(next(p for p in source.iterdir() if p.is_dir()).iterdir())[3:]:  # one class of 3 against 12: 4:1
        extra.unlink()
    base = [sys.executable, "-m", "golabels_cli", "adapt", str(source), str(target), "--backbone", "test_resnet", "--no-pretrained",
            "--image-size", "32", "--iters", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--refresh-every", "1"]

    def warning(*extra):
        done = subprocess.run([*base, *extra, "--out", str(tmp_path / "runs" / "_".join(extra).replace("-", ""))], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.splitlines() if "source classes are imbalanced" in line]
        assert len(lines) <= 1
        return lines[0] if lines else None

    assert "this run uses --balance-source --balance-target, the default on a source imbalanced above 3:1" in warning("--method", "cdan-e")
    assert warning("--method", "mcc") is None
    # the other cases in-process: the hint the warning ends with, as resolve makes it
    from golabels_cli.config import build_config, resolve_balancing
    from golabels_cli.training.resolve import _imbalance_hint

    def hint(**options):
        cfg = build_config({"source": str(source), "target": str(target), "iters": 2, "refresh_every": 1, **options})
        return _imbalance_hint(cfg, resolve_balancing(cfg, True))

    assert hint(method="cdan-e", balance_source=False, balance_target=False).startswith("try --balance-source --balance-target")
    assert hint(method="dann", balance_source=True).startswith("this run uses --balance-source --balance-target (--balance-target by "
                                                               "default")
    assert all(hint(method=recipe) is None for recipe in ("source-only", "bnm", "im", "mcc"))
    assert hint(method="cdan-e+mcc") is not None
