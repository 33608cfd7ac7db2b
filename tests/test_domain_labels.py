import math

import pytest
import torch
import torch.nn.functional as F

from golabels_cli.domain_labels import MODES, domain_targets


def logit(p):
    return math.log(p / (1 - p))


# p: discriminator's belief "source"; d: 1 source, 0 target.
P = torch.tensor([0.9, 0.3, 0.5, 0.1, 0.7, 0.5])
D = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
LOGITS = torch.tensor([logit(p) for p in P.tolist()])


def test_go_labels_hand_computed():
    t = domain_targets("go", LOGITS, D)
    # correct source (0.9) keeps 1; fooled source (0.3) and boundary source (0.5) get 0.5;
    # correct target (0.1) keeps 0; fooled target (0.7) and boundary target (0.5) get 0.5.
    assert t.targets.tolist() == [1.0, 0.5, 0.5, 0.0, 0.5, 0.5]
    assert t.weights.tolist() == [1.0] * 6
    assert t.changed.tolist() == [False, True, True, False, True, True]
    assert t.correct.tolist() == [True, False, False, True, False, False]


def test_go_labels_equal_eq3_away_from_boundary():
    p = torch.tensor([0.95, 0.2, 0.05, 0.8])
    d = torch.tensor([1.0, 1.0, 0.0, 0.0])
    t = domain_targets("go", torch.logit(p), d)
    assert torch.allclose(t.targets, (d + torch.round(p)) / 2)


def test_fixed_hand_computed():
    t = domain_targets("fixed", LOGITS, D)
    assert t.targets.tolist() == D.tolist()
    assert t.weights.tolist() == [1.0] * 6
    assert not t.changed.any()


def test_soft_hand_computed():
    t = domain_targets("soft", LOGITS, D)
    expected = [(1 + 0.9) / 2, (1 + 0.3) / 2, 0.75, 0.05, 0.35, 0.25]
    assert t.targets.tolist() == pytest.approx(expected, abs=1e-6)
    assert t.changed.all()


def test_zero_out_hand_computed():
    t = domain_targets("zero-out", LOGITS, D)
    assert t.targets.tolist() == D.tolist()
    assert t.weights.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert t.changed.tolist() == [False, True, True, False, True, True]


@pytest.mark.parametrize("mode", MODES)
def test_no_gradient_flows_into_targets(mode):
    logits = LOGITS.clone().requires_grad_(True)
    t = domain_targets(mode, logits, D)
    assert not t.targets.requires_grad and not t.weights.requires_grad
    loss = F.binary_cross_entropy_with_logits(logits, t.targets, weight=t.weights)
    (grad,) = torch.autograd.grad(loss, logits)
    # With constant targets g, d BCE / d logit = w * (sigmoid(logit) - g) / N exactly.
    expected = t.weights * (torch.sigmoid(LOGITS) - t.targets) / len(P)
    assert torch.allclose(grad, expected, atol=1e-7)


def test_unknown_mode():
    with pytest.raises(ValueError):
        domain_targets("sometimes", LOGITS, D)
