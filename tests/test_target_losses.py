"""Losses on the target's predictions (MCC, BNM, IM): their formulas, the recipes that combine them
with an alignment term, and runs of those recipes end to end (adapt, eval, export, predict, resume)."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, cli_subprocess, interrupt_at, read_jsonl
from golabels_cli.methods import TARGET_LOSSES, StepOutput, TargetBank, get_recipe
from golabels_cli.methods.bnm import batch_nuclear_norm
from golabels_cli.methods.im import information_maximization
from golabels_cli.methods.mcc import minimum_class_confusion


def _mcc_by_hand(logits, temperature):
    """The MCC paper's Eqs. 1-6, one element at a time."""
    batch, classes = logits.shape
    p = F.softmax(logits / temperature, dim=1)
    h = [-sum(float(p[i, j]) * math.log(float(p[i, j])) for j in range(classes)) for i in range(batch)]
    w = [1 + math.exp(-x) for x in h]
    w = [batch * x / sum(w) for x in w]
    c = [[sum(w[i] * float(p[i, j]) * float(p[i, k]) for i in range(batch)) for k in range(classes)] for j in range(classes)]
    c = [[c[j][k] / sum(c[j]) for k in range(classes)] for j in range(classes)]
    return sum(c[j][k] for j in range(classes) for k in range(classes) if j != k) / classes


def test_mcc_is_the_papers_formula():
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    assert float(minimum_class_confusion(logits, 2.5)) == pytest.approx(_mcc_by_hand(logits, 2.5), rel=1e-5)
    assert float(minimum_class_confusion(logits, 1.0)) == pytest.approx(_mcc_by_hand(logits, 1.0), rel=1e-5)


def test_mcc_is_zero_for_confident_distinct_predictions_and_largest_for_uniform_ones():
    confident = torch.eye(4) * 100  # each row a different class, certain
    assert float(minimum_class_confusion(confident, 1.0)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(5, 4)
    assert float(minimum_class_confusion(uniform, 2.5)) == pytest.approx(3 / 4)  # (C - 1) / C


def test_bnm_rewards_predictions_both_confident_and_diverse():
    assert float(batch_nuclear_norm(torch.eye(3) * 100)) == pytest.approx(-1.0, abs=1e-5)  # three orthonormal rows
    collapsed = torch.tensor([[100.0, 0, 0]] * 3)  # confident, all one class: rank 1, singular values sqrt(3), 0, 0
    assert float(batch_nuclear_norm(collapsed)) == pytest.approx(-math.sqrt(3) / 3, abs=1e-5)
    uniform = float(batch_nuclear_norm(torch.zeros(3, 3)))
    assert float(batch_nuclear_norm(torch.eye(3) * 100)) < float(batch_nuclear_norm(collapsed)) < uniform + 1


def test_im_is_mean_entropy_minus_entropy_of_the_mean():
    assert float(information_maximization(torch.zeros(4, 3))) == pytest.approx(0.0, abs=1e-6)  # uniform: log C - log C
    assert float(information_maximization(torch.eye(3) * 100)) == pytest.approx(-math.log(3), abs=1e-5)
    assert float(information_maximization(torch.tensor([[100.0, 0, 0]] * 3))) == pytest.approx(0.0, abs=1e-5)  # collapsed


@pytest.mark.parametrize("name", sorted(TARGET_LOSSES))
def test_every_target_loss_sends_a_gradient_to_the_logits(name):
    logits = torch.randn(8, 5, requires_grad=True)
    bank = TargetBank(10, 4, 5) if TARGET_LOSSES[name].bank else None
    out = StepOutput(torch.randn(8, 4), logits, torch.zeros(0, dtype=torch.long), target_index=torch.arange(8), bank=bank)
    TARGET_LOSSES[name].loss(out, {"mcc_temperature": 2.5, "aad_neighbours": 3, "aad_dispersion": 1.0}).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_recipes_parse_to_one_spelling():
    recipe = get_recipe("mcc+cdan-e")
    assert recipe.name == "cdan-e+mcc" and recipe.alignment.name == "cdan-e" and [loss.name for loss in recipe.target_losses] == ["mcc"]
    assert recipe.adversarial and recipe.uses_target
    alone = get_recipe("mcc")
    assert not alone.adversarial and alone.uses_target and alone.alignment.name == "source-only"
    assert "mcc_temperature" in alone.options and "target_loss_weight" in alone.options
    assert get_recipe("bnm+im").name == "bnm+im"
    assert not get_recipe("source-only").uses_target and get_recipe("source-only").options == ()
    for bad, says in (("dann+cdan", "two alignment terms"), ("source-only+mcc", "trains on no target"), ("mcc+mcc", "twice"),
                      ("mcc+nope", "unknown method 'nope'"), ("", "empty")):
        with pytest.raises(ValueError, match=says):
            get_recipe(bad)


@pytest.mark.parametrize("method, says", [("cdan-e+mmc", "did you mean mcc"), ("dann+cdan-e", "two alignment terms"),
                                          ("source-only+bnm", "trains on no target")])
def test_a_bad_recipe_is_one_line_and_exit_2(domains, tmp_path, method, says):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--method", method, "--out", tmp_path / "run")
    assert result.exit_code == 2 and says in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()][0].startswith("error:")
    assert not (tmp_path / "run").exists()


def test_a_loss_only_recipe_draws_target_batches_and_builds_no_discriminator(domains, monkeypatch):
    from golabels_cli.config import build_config
    from golabels_cli.training import build, loop, step_of
    from golabels_cli.training.state import LOSS_KEYS
    from golabels_cli.training.state import LoopState

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 2, "method": "mcc"})
    t = build(cfg)
    assert t.disc is None and t.multilinear is None and not t.recipe.adversarial and t.recipe.uses_target
    # the optimizer trains the classifier alone
    model_params = {id(p) for p in t.model.parameters()}
    assert all(id(p) in model_params for g in t.optimizer.param_groups for p in g["params"])
    streams = loop.open_streams(t, LoopState())
    try:
        xs, ys, xt, _ = streams.next()
        assert xt is not None and xt.shape == xs.shape
        seen = {}
        (part,) = t.objective.target_losses

        def spy(out, options):
            seen["rows"] = len(out.target_logits)
            return part.loss(out, options)

        step = step_of(t, streams.step.forward, t.objective.replaced(target_losses=(dataclasses.replace(part, loss=spy),)))
        logged = step(xs, ys, xt, 0.5)
        assert seen["rows"] == 4  # the target rows only
        assert float(logged["loss_adv"]) == 0 and float(logged["loss_target"]) > 0 and set(logged) == set(LOSS_KEYS)
    finally:
        streams.close()


def test_mcc_alone_runs_evaluates_exports_and_predicts(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "4", "--log-every", "1", "--method", "mcc", "--eval-dir", target)
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 4 and all(r["loss_target"] > 0 and r["loss_adv"] == 0 and r["disc_acc"] is None for r in rows)
    assert all(r["samples_per_step"] == 8 for r in rows)  # 4 source + 4 target images a step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "mcc" and summary["bn_stats"] == "target" and summary["final"]["loss_target"] > 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["discriminator"] == {}
    from golabels_cli import console
    from golabels_cli.tables import print_adapt_summary

    with console.stdout.capture() as captured:  # issue 55 item 9: "adversarial 0.000" for a run without a discriminator
        print_adapt_summary(summary)
    shown = " ".join(captured.get().split())
    assert "final losses" in shown and "adversarial" not in shown
    assert cli("eval", run, target, "--device", "cpu").exit_code == 0
    exported = cli("export", run, "--onnx", "--json")
    assert exported.exit_code == 0, exported.stderr
    onnx_path = json.loads(exported.stdout)["path"]
    predicted = cli_subprocess("predict", onnx_path, target, "--format", "jsonl")
    assert predicted.returncode == 0, predicted.stderr
    assert len(predicted.stdout.splitlines()) == 24


def test_go_labels_act_on_the_alignment_term_of_a_combined_recipe(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "4", "--log-every", "1", "--method", "cdan-e+mcc+bnm",
                     "--domain-labels", "go", "--target-loss-weight", "0.5")
    rows = read_jsonl(run / "metrics.jsonl")
    assert all(r["loss_adv"] > 0 and r["loss_target"] is not None and r["disc_acc"] is not None for r in rows)
    assert any(r["relabeled_src"] + r["relabeled_tgt"] > 0 for r in rows)  # Go-labels changed some targets
    config = (run / "config.yaml").read_text()
    assert "method: cdan-e+mcc+bnm" in config and "target-loss-weight: 0.5" in config


def test_the_weight_and_temperature_change_the_run(domains, tmp_path):
    source, target = domains
    runs = {name: adapt_tiny(source, target, tmp_path / name, "--iters", "3", "--method", "mcc", *extra)
            for name, extra in (("a", ()), ("weight", ("--target-loss-weight", "0")), ("temperature", ("--mcc-temperature", "1")))}
    weights = {name: load_file(run / "model.safetensors") for name, run in runs.items()}
    assert not torch.equal(weights["a"]["head.weight"], weights["weight"]["head.weight"])
    assert not torch.equal(weights["a"]["head.weight"], weights["temperature"]["head.weight"])
    # weight 0: the target loss is logged but trains nothing, as source-only on the same draws would
    assert read_jsonl(runs["weight"] / "metrics.jsonl")[-1]["loss_target"] > 0


@pytest.mark.parametrize("option, value", [("--mcc-temperature", "0"), ("--target-loss-weight", "-1")])
def test_bad_loss_options_are_refused(domains, tmp_path, option, value):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--method", "mcc", option, value, "--out", tmp_path / "run")
    assert result.exit_code == 2 and option in result.stderr and not (tmp_path / "run").exists()


def test_a_combined_recipe_resumes_to_the_uninterrupted_weights(domains, tmp_path):
    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted

    source, target = domains
    values = {"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
              "device": "cpu", "workers": 0, "batch_size": 4, "iters": 6, "method": "cdan-e+mcc", "domain_labels": "go"}
    training.adapt(build_config(values), out=tmp_path / "whole")

    interrupt = interrupt_at(3)

    with pytest.raises(Interrupted):
        training.adapt(build_config(values), out=tmp_path / "stopped", progress=interrupt)
    training.resume(tmp_path / "stopped")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "stopped" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    whole, stopped = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "stopped" / "metrics.jsonl")
    assert [r["loss_target"] for r in whole] == [r["loss_target"] for r in stopped]


def test_a_recipe_with_target_losses_keeps_the_reference_lr_decay():
    from golabels_cli.config import AdaptConfig

    assert AdaptConfig(method="mcc", iters=1000).resolved_lr_gamma() == 1e-3
    assert AdaptConfig(method="cdan-e+bnm", iters=1000).resolved_lr_gamma() == 1e-3
    assert AdaptConfig(method="cdan-e", iters=1000).resolved_lr_gamma() == 0.02  # the adversary alone: scaled to --iters
    assert AdaptConfig(method="mcc", iters=1000, lr_gamma=0.02).resolved_lr_gamma() == 0.02  # an explicit gamma wins


def test_the_default_recipe_follows_whether_the_backbone_trains(domains):
    from golabels_cli.config import FROZEN_BACKBONE_METHOD, TRAINED_BACKBONE_METHOD, build_config

    source, target = domains
    values = {"source": str(source), "target": str(target), "backbone": "test_resnet", "weights": None, "pretrained": False}
    assert build_config({**values, "freeze_backbone": True}).method == FROZEN_BACKBONE_METHOD == "auto"  # a search (issue 42)
    assert build_config(values).method == TRAINED_BACKBONE_METHOD == "cdan-e"
    assert build_config({**values, "freeze_backbone": True, "method": "dann"}).method == "dann"  # given, kept


def test_progress_and_summary_show_the_loss_on_the_targets_predictions(domains, tmp_path):
    source, target = domains
    from typer.testing import CliRunner

    from golabels_cli.cli import app

    args = ["adapt", str(source), str(target), *TINY, "--iters", "2", "--log-every", "1", "--method", "cdan-e+im", "--out",
            str(tmp_path / "run")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # wide enough that the summary table wraps no line
    assert result.exit_code == 0, result.stderr
    assert "tgt-loss " in result.stderr and "on the target's predictions" in result.stdout
    plain = cli("adapt", source, target, *TINY, "--iters", "2", "--log-every", "1", "--out", tmp_path / "plain")
    assert plain.exit_code == 0 and "tgt-loss" not in plain.stderr  # nothing to show without such a loss
