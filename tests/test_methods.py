import math

import torch

import pytest

from golabels_cli.config import AdaptConfig
from golabels_cli.methods import (Adversary, Batch, GradientProbe, MultilinearMap, adversarial_loss, entropy_weights, get_method,
                                  grad_reverse, grl_coeff, gvb_weights, spectral_alignment)
from golabels_cli.models import BridgedHead


def discriminator(in_dim, hidden, method="dann", layers=None):
    return get_method(method).discriminator(in_dim, hidden, layers)


def discriminator_input_dim(method, feature_dim, num_classes, cdan_map="auto"):
    return get_method(method).discriminator_input_dim(feature_dim, num_classes, cdan_map)


def loss_of(method, mode, features, logits, domain, disc, multilinear, coeff, head=None, options=None, probe=None):
    adversary = Adversary(get_method(method), disc, multilinear, head, options or {})
    return adversarial_loss(adversary, Batch(features, logits, domain), mode, coeff, probe)


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.25) * 2).sum().backward()
    assert x.grad.tolist() == [-0.5] * 3


def test_grl_schedule():
    assert grl_coeff(0, 100) == 0.0
    assert grl_coeff(50, 100) == 2 / (1 + math.exp(-5)) - 1
    assert 0.999 < grl_coeff(100, 100) < 1.0


def test_reference_schedule_follows_absolute_iterations():
    # The original CDAN code and TLlib: lambda 0.05 at iteration 100 and 0.245 at 500, whatever the
    # run's length; lr * (1 + 0.001 i) ** -0.75, 0.59x after 1000 iterations.
    for iters in (1000, 4000):
        cfg = AdaptConfig(iters=iters, schedule="reference")
        assert grl_coeff(100, cfg.grl_horizon(), cfg.grl_alpha) == pytest.approx(0.04996, abs=1e-4)
        assert grl_coeff(500, cfg.grl_horizon(), cfg.grl_alpha) == pytest.approx(0.2449, abs=1e-4)
        assert cfg.resolved_lr_gamma() == 1e-3
    assert (1 + AdaptConfig(iters=1000, schedule="reference").resolved_lr_gamma() * 1000) ** -0.75 == pytest.approx(0.595, abs=1e-3)
    scaled = AdaptConfig(iters=1000, schedule="scaled")
    assert grl_coeff(500, scaled.grl_horizon(), scaled.grl_alpha) == pytest.approx(0.9866, abs=1e-4)
    assert scaled.resolved_lr_gamma() == 0.02
    assert AdaptConfig(iters=1000, schedule="reference", lr_gamma=0.5).resolved_lr_gamma() == 0.5  # an explicit gamma wins


def test_the_schedule_object_is_the_formula_for_the_loop_and_the_head_start():
    import torch

    from golabels_cli.training.schedule import Schedule

    cfg = AdaptConfig(iters=1000, schedule="reference", lr=0.01, head_start=50)
    schedule = Schedule.of(cfg, scale=2.0)
    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": backbone.parameters(), "lr": 0.002}, {"params": head.parameters(), "lr": 0.02}], lr=0.02)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    for step in (0, 1, 500, 999):
        factor = (1.0 + 1e-3 * step) ** -0.75
        assert schedule.step_update(optimizer, step) == 0.01 * 2.0 * factor
        assert [g["lr"] for g in optimizer.param_groups] == [0.002 * factor, 0.02 * factor]
        assert schedule.coeff(step) == grl_coeff(step, 10000, 10.0)
    head_start = Schedule.head_start(cfg)  # --lr decayed over the head start's own 50 steps, as a scaled run's
    assert head_start.factor(50) == (1 + 20 / 50 * 50) ** -0.75 and head_start.lr == 0.01


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
    # Office-31 (256 x 31 > 4096): randomized by default (auto); the full product with --cdan-map full,
    # as TLlib and the original code; randomized everywhere with --cdan-map randomized.
    big = MultilinearMap(256, 31, torch.Generator().manual_seed(0))
    assert big.randomized and big(torch.randn(4, 256), torch.softmax(torch.randn(4, 31), 1)).shape == (4, 1024)
    assert discriminator_input_dim("cdan-e", 256, 31) == 1024
    office = MultilinearMap(256, 31, torch.Generator().manual_seed(0), cdan_map="full")
    assert not office.randomized and office(torch.randn(4, 256), torch.softmax(torch.randn(4, 31), 1)).shape == (4, 7936)
    assert discriminator_input_dim("cdan-e", 256, 31, "full") == 7936
    assert MultilinearMap(5, 3, cdan_map="randomized").randomized and discriminator_input_dim("cdan", 5, 3, "randomized") == 1024
    assert not MultilinearMap(5, 3, cdan_map="full").randomized


def test_adversarial_loss_reverses_gradient_into_features():
    torch.manual_seed(0)
    features = torch.randn(8, 6, requires_grad=True)
    logits = torch.randn(8, 3)
    domain = torch.tensor([1.0] * 4 + [0.0] * 4)
    disc = discriminator(6, 16)
    loss, extra, stats = loss_of("dann", "go", features, logits, domain, disc, None, coeff=1.0)
    assert extra.item() == 0
    loss.backward()
    reversed_grad = features.grad.clone()
    features.grad = None
    for p in disc.parameters():
        p.grad = None
    loss, _, _ = loss_of("dann", "go", features, logits, domain, disc, None, coeff=0.0)
    loss.backward()
    assert torch.count_nonzero(features.grad) == 0 and torch.count_nonzero(reversed_grad) > 0
    assert set(stats) >= {"disc_acc", "relabeled_src", "relabeled_tgt"}


def test_probe_reads_the_reversed_gradient_and_go_labels_shrink_it():
    torch.manual_seed(0)
    features = torch.randn(8, 6, requires_grad=True)
    logits, domain = torch.randn(8, 3), torch.tensor([1.0] * 4 + [0.0] * 4)
    disc = discriminator(6, 16).eval()
    norms = {}
    for mode in ("fixed", "go"):
        features.grad, probe = None, GradientProbe()
        loss, _, _ = loss_of("dann", mode, features, logits, domain, disc, None, coeff=0.5, probe=probe)
        loss.backward()
        assert torch.isclose(probe.norm, torch.linalg.vector_norm(features.grad))
        norms[mode] = probe.norm.item()
    # A fooled sample's target moves from d to 0.5, nearer its prediction: its gradient shrinks.
    assert norms["go"] < norms["fixed"]


def test_gvb_weights_mean_one_per_domain_and_reversed_gradient():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.5, 0.0]], requires_grad=True)
    probs = torch.softmax(logits, 1)
    w = gvb_weights(probs, coeff=1.0)
    raw = torch.exp(-(-(probs * probs.log()).sum(1))).detach()
    expected = torch.cat([raw[:3] / raw[:3].mean(), raw[3:] / raw[3:].mean()])
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.isclose(w[:3].mean(), torch.tensor(1.0)) and torch.isclose(w[3:].mean(), torch.tensor(1.0))
    # The gradient into the classifier through the weights is reversed (GVB's grl hook on the entropy).
    w.sum().backward()
    reversed_grad = logits.grad.clone()
    logits.grad = None
    probs = torch.softmax(logits, 1)
    raw = torch.exp((probs * probs.log()).sum(1))
    torch.cat([raw[:3] / raw[:3].sum().detach() * 3, raw[3:] / raw[3:].sum().detach() * 3]).sum().backward()
    assert torch.allclose(reversed_grad, -logits.grad, atol=1e-6)


def test_bridge_penalties_hand_computed():
    torch.manual_seed(0)
    head = BridgedHead(2, 2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.fc.bias.zero_()
        head.bridge.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -1.0]]))
        head.bridge.bias.copy_(torch.tensor([0.0, 0.25]))
    f = torch.tensor([[2.0, 4.0], [-2.0, 0.0]])
    assert torch.allclose(head(f), torch.tensor([[1.0, 7.75], [-1.0, -0.25]]))  # fc(f) - bridge(f)
    disc = discriminator(2, 4, method="gvb").eval()
    logits = head(f)
    options = {"bridge_g_weight": 2.0, "bridge_d_weight": 3.0}
    _, extra, _ = loss_of("gvb", "fixed", f, logits, torch.tensor([1.0, 0.0]), disc, None, 1.0, head, options)
    bridge_g = torch.tensor([[1.0, -4.0 + 0.25], [-1.0, 0.25]]).abs().mean()  # |bridge(f)| by hand: mean 1.5
    _, bridge_d = disc(torch.softmax(logits, 1))
    assert torch.isclose(extra, 2.0 * bridge_g + 3.0 * bridge_d.abs().mean())
    assert torch.isclose(bridge_g, torch.tensor(1.5))


def test_spectral_alignment_hand_computed():
    # Diagonal feature batches: the singular values are the diagonal's absolute values.
    source = torch.diag(torch.tensor([3.0, 2.0, 0.5]))
    target = torch.diag(torch.tensor([2.0, 2.0, 1.0]))
    # k = 1 squares the smallest source value: [3, 2, 0.25] vs [2, 2, 1] -> sqrt(1 + 0 + 0.5625) / 3
    assert torch.isclose(spectral_alignment(source, target, 1), torch.tensor(math.sqrt(1.5625) / 3))
    # k = 0: plain distance of the spectra; identical batches: 0; k larger than the spectrum is capped.
    assert torch.isclose(spectral_alignment(source, target, 0), torch.tensor(math.sqrt(1 + 0.25) / 3))
    assert spectral_alignment(target, target, 0).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(spectral_alignment(source, target, 11))


def test_asan_discriminator_is_spectrally_normalized():
    from torch.nn.utils import parametrize

    disc = discriminator(8, 16, method="asan")
    linears = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(parametrize.is_parametrized(m, "weight") for m in linears)
    assert all(type(m.parametrizations.weight[0]).__name__ == "_SpectralNorm" for m in linears)
    # No normalization after the spectrally normalized layers: a BatchNorm would rescale their outputs
    # and undo the Lipschitz bound (the original ASAN code has none). Dropout, as in the original.
    layers = list(disc.body)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm, torch.nn.GroupNorm)) for m in disc.modules())
    assert [type(m).__name__.removeprefix("Parametrized") for m in layers] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout"]
    for other in ("dann", "cdan-e", "gvb"):
        assert not any(parametrize.is_parametrized(m) for m in discriminator(8, 16, method=other).modules())
    # GVB's original discriminator too has dropout and no BatchNorm; DANN and CDAN keep TLlib's.
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in discriminator(8, 16, method="gvb").modules())
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in discriminator(8, 16, method="cdan-e").modules()) == 2
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in discriminator(8, 16, method="asan", layers="batchnorm").modules()) == 2
    # After a few training forwards the largest singular value of each weight is about 1.
    disc.train()
    for _ in range(20):
        disc(torch.randn(4, 8))
    assert all(abs(torch.linalg.matrix_norm(m.weight, ord=2).item() - 1) < 0.05 for m in linears)


def test_dann_e_uses_entropy_weights():
    torch.manual_seed(0)
    features, logits = torch.randn(6, 4), torch.randn(6, 3) * 3
    domain = torch.tensor([1.0] * 3 + [0.0] * 3)
    disc = discriminator(4, 8).eval()
    plain, _, _ = loss_of("dann", "fixed", features, logits, domain, disc, None, 1.0)
    weighted, _, _ = loss_of("dann-e", "fixed", features, logits, domain, disc, None, 1.0)
    d_logits, _ = disc(features)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(d_logits, domain, reduction="none")
    assert torch.isclose(plain, bce.mean())
    assert torch.isclose(weighted, (entropy_weights(torch.softmax(logits, 1)) * bce).mean())


def test_defaults_resolved_from_the_measurements():
    """fixed domain labels; trade-off 2 with a pretrained backbone (frozen or fine-tuned), 1 from
    random init; explicit values win."""
    from golabels_cli.config import build_config

    base = {"source": "s", "target": "t"}
    assert build_config(base).domain_labels == "fixed" and build_config(base).trade_off == 2.0
    assert build_config({**base, "freeze_backbone": True}).trade_off == 2.0
    assert build_config({**base, "weights": "w.safetensors", "pretrained": False}).trade_off == 2.0
    assert build_config({**base, "pretrained": False}).trade_off == 1.0
    assert build_config({**base, "pretrained": False, "freeze_backbone": True}).trade_off == 1.0
    assert build_config({**base, "freeze_backbone": True, "trade_off": 0.5}).trade_off == 0.5
    assert build_config({**base, "method": "asan"}).discriminator == "dropout"
    assert build_config({**base, "method": "dann"}).discriminator == "batchnorm"


def test_per_domain_forward_normalizes_each_domain_apart(domains, tmp_path):
    """forward: per-domain (GVB's and ASAN's code) trains and records itself in config.yaml."""
    import yaml
    from conftest import TINY, cli

    source, target = domains
    config = tmp_path / "c.yaml"
    config.write_text("forward: per-domain\n")
    result = cli("adapt", source, target, *TINY, "--iters", "3", "--config", config, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["forward"] == "per-domain"
    config.write_text("forward: per-domain\ndevices: 2\n")
    refused = cli("adapt", source, target, *TINY, "--config", config)
    assert refused.exit_code == 2 and "per-domain" in refused.stderr
