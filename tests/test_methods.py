import math

import torch

from golabels_cli.methods import MultilinearMap, adversarial_loss, entropy_weights, grad_reverse, grl_coeff
from golabels_cli.models import discriminator


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.25) * 2).sum().backward()
    assert x.grad.tolist() == [-0.5] * 3


def test_grl_schedule():
    assert grl_coeff(0, 100) == 0.0
    assert grl_coeff(50, 100) == 2 / (1 + math.exp(-5)) - 1
    assert 0.999 < grl_coeff(100, 100) < 1.0


def test_entropy_weights_mean_one_and_confident_heavier():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    w = entropy_weights(probs)
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    raw = torch.tensor([2.0, 1.5, 1 + math.exp(-(-0.9 * math.log(0.9) - 0.1 * math.log(0.1)))])
    assert torch.allclose(w, raw / raw.mean())


def test_multilinear_outer_product_and_randomized():
    f, g = torch.randn(4, 5), torch.softmax(torch.randn(4, 3), 1)
    small = MultilinearMap(5, 3)
    assert torch.allclose(small(f, g)[1], torch.outer(g[1], f[1]).flatten())
    big = MultilinearMap(256, 31, torch.Generator().manual_seed(0))
    assert big.randomized and big(torch.randn(4, 256), torch.softmax(torch.randn(4, 31), 1)).shape == (4, 1024)


def test_adversarial_loss_reverses_gradient_into_features():
    torch.manual_seed(0)
    features = torch.randn(8, 6, requires_grad=True)
    logits = torch.randn(8, 3)
    domain = torch.tensor([1.0] * 4 + [0.0] * 4)
    disc = discriminator(6, 16)
    loss, stats = adversarial_loss("dann", "go", features, logits, domain, disc, None, coeff=1.0)
    loss.backward()
    reversed_grad = features.grad.clone()
    features.grad = None
    for p in disc.parameters():
        p.grad = None
    loss, _ = adversarial_loss("dann", "go", features, logits, domain, disc, None, coeff=0.0)
    loss.backward()
    assert torch.count_nonzero(features.grad) == 0 and torch.count_nonzero(reversed_grad) > 0
    assert set(stats) >= {"disc_acc", "relabeled_src", "relabeled_tgt"}
