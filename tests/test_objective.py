"""The objective (methods/objective.py): a recipe's loss as one object, usable in a plain PyTorch
loop, and a target loss as one module plus one registry line."""

import copy
import re
import json

import pytest
import torch

import golabels
from golabels.hooks import Objective, StepOutput, grl_coeff
from golabels_cli import choices
from golabels_cli.config import build_config
from golabels_cli.training import build, step_of

TOY_LOSS = '''"""A toy loss on the target's features: L_toy = || mean_t f - mean_s f ||^2 (a linear MMD)."""

from golabels.hooks import TargetLoss


def feature_mean_gap(out, options):
    source, target = out.features[: out.sources].float(), out.target_features.float()
    return (target.mean(0) - source.mean(0)).pow(2).sum()


LOSS = TargetLoss(name="toy", summary="the squared gap of the domains' feature means", loss=feature_mean_gap)
'''


def tiny(source, target, **options):
    values = {"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
              "device": "cpu", "workers": 0, "batch_size": 4, "iters": 3}
    return build_config({**values, **options})


def test_a_plain_loop_with_the_public_objective_matches_golabels_step(domains):
    """cdan-e+mcc with Go-labels through Objective.of in ten lines of plain PyTorch: the same
    losses and weights as golabels' own step on the same batches, to 1e-6."""
    t = build(tiny(*domains, method="cdan-e+mcc", domain_labels="go"))
    model = copy.deepcopy(t.model)
    objective = Objective.of("cdan-e+mcc", len(t.source.classes), t.cfg.bottleneck_dim, head=model.head, trade_off=t.cfg.trade_off,
                             domain_labels="go")
    objective.discriminator.load_state_dict(t.disc.state_dict())
    objective.multilinear.load_state_dict(t.multilinear.state_dict())
    optimizer = torch.optim.SGD([*model.parameters(), *objective.parameters()], lr=t.cfg.lr, momentum=t.cfg.momentum,
                                weight_decay=t.cfg.weight_decay, nesterov=True)
    ours = step_of(t)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        xs, xt = torch.rand(4, 3, 32, 32, generator=generator), torch.rand(4, 3, 32, 32, generator=generator)
        ys = torch.randint(0, len(t.source.classes), (4,), generator=generator)
        coeff = grl_coeff(step, 3)
        # the plain loop
        logits, features = model(torch.cat([xs, xt]))
        loss, logged, _ = objective(StepOutput(features, logits, ys), coeff)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # golabels' step
        theirs = ours(xs, ys, xt, coeff)
        for key in ("loss_cls", "loss_adv", "loss_target", "disc_acc", "relabeled_src", "relabeled_tgt"):
            assert float(logged[key]) == pytest.approx(float(theirs[key]), abs=1e-6), key
        assert float(logged["loss_target"]) > 0 and float(logged["loss_adv"]) > 0
    for (name, a), b in zip(model.state_dict().items(), t.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    for a, b in zip(objective.discriminator.state_dict().values(), t.disc.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert not torch.equal(model.head.weight, copy.deepcopy(build(tiny(*domains, method="cdan-e+mcc")).model.head.weight))  # it trained


@pytest.mark.parametrize("args, options, words", [
    (("cdan-e+mcc", 3, 8), {"rsl_k": 3}, "cdan-e+mcc reads no option 'rsl_k'"),
    (("dann", 3, 8), {"domain_labels": "goo"}, "unknown domain_labels 'goo'"),
    # issue 54 item 14: a torch RuntimeError, a NaN loss, or nothing at all before
    (("cdan-e", 3, -8), {}, "feature_dim must be a positive integer, got -8"),
    (("cdan-e", -3, 8), {}, "num_classes must be a positive integer, got -3"),
    (("mcc", 0, 8), {}, "num_classes must be a positive integer, got 0"),
    (("mcc", 3, 8), {"mcc_temperature": 0}, "mcc_temperature must be positive, got 0"),
    (("cdan-e", 3, 8), {"cdan_map": "zz"}, "unknown cdan_map 'zz'"),
    (("cdan-e", 3, 8), {"trade_off": float("nan")}, "trade_off must be a finite number, got nan"),
    (("mcc", 3, 8), {"domain_labels": "go"}, "domain_labels='go' sets a discriminator's targets, and mcc has no discriminator"),
    (("aad", 3, 8), {"target_size": 0}, "target_size must be a positive integer, got 0"),
    (("zzz", 3, 8), {}, "recipe 'zzz' is not a --method value"),
], ids=["option", "domain-labels", "feature-dim", "negative-classes", "no-classes", "temperature", "cdan-map", "trade-off", "go-mcc",
        "target-size", "recipe"])
def test_objective_of_names_the_argument_it_refuses(args, options, words):
    from golabels_cli.errors import InputError

    with pytest.raises(InputError, match=re.escape(words)):
        Objective.of(*args, **options)


def test_objective_of_takes_a_recipe_own_options():
    assert Objective.of("mcc", 3, 8, mcc_temperature=2.5).options["mcc_temperature"] == 2.5
    assert list(Objective.of("mcc", 3, 8).parameters()) == []  # no discriminator


def test_a_target_loss_on_features_is_one_module_and_one_registry_line(domains, tmp_path, monkeypatch):
    """A toy loss reading the target's features, declared in a module of its own outside the
    package and named in choices.TARGET_LOSSES: `--method cdan-e+toy` trains, logs its loss,
    and the run evaluates."""
    (tmp_path / "toy_feature_loss.py").write_text(TOY_LOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(choices.TARGET_LOSSES, "toy", "toy_feature_loss")  # the one registry line
    source, target = domains
    run = golabels.adapt(golabels.config(source, target, backbone="test_resnet", pretrained=False, image_size=32, device="cpu", workers=0,
                                         batch_size=4, iters=4, log_every=1, eval_every=0, method="cdan-e+toy"), out=tmp_path / "run")
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert run.summary["method"] == "cdan-e+toy" and len(rows) == 4
    assert all(row["loss_target"] > 0 and row["loss_adv"] is not None for row in rows)
    assert 0 <= golabels.evaluate(run.run_dir, target, device="cpu").accuracy <= 1


def test_the_objective_is_a_module_that_moves_saves_and_switches_mode_with_its_parts():
    head = torch.nn.Linear(8, 3)
    objective = Objective.of("cdan-e+aad", 3, 8, head=head, target_size=5)
    keys = set(objective.state_dict())
    assert any(k.startswith("discriminator.") for k in keys) and {"bank.features", "bank.scores"} <= keys
    assert not any(k.startswith(("head", "_head")) for k in keys)  # the classifier's head is the model's
    assert {id(p) for p in objective.parameters()} == {id(p) for p in objective.discriminator.parameters()}
    assert objective.head is head
    assert objective.train(False) is objective and not objective.discriminator.training
    moved = objective.to(torch.float64)
    assert moved is objective and next(objective.discriminator.parameters()).dtype == torch.float64
    copy_ = Objective.of("cdan-e+aad", 3, 8, head=head, target_size=5)
    copy_.load_state_dict(objective.float().state_dict())
    teacher = torch.full((5, 3), 1 / 3)
    taught = objective.replaced(teacher=teacher, teacher_weight=0.5)
    assert taught.discriminator is objective.discriminator and torch.equal(taught.state_dict()["teacher"], teacher)
    # A call returns the loss, what it logs and the probe that backward fills with the reversed gradient's norm.
    objective.train()
    features = torch.randn(8, 8, requires_grad=True)
    logits = head(features)
    out = StepOutput(features, logits, torch.tensor([0, 1, 2, 0]), target_index=torch.arange(4) % 5)
    objective.bank.fill(torch.randn(5, 8), torch.randn(5, 3))
    result = objective(out, 0.5)
    assert result.probe is not None and result.probe.norm is None
    result.loss.backward()
    assert result.probe.norm is not None and float(result.probe.norm) > 0
    assert Objective.of("mcc", 3, 8)(StepOutput(features, logits, torch.tensor([0, 1, 2, 0])), 0.5).probe is None
