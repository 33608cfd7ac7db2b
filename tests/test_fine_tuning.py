"""Fine-tuning a pretrained backbone: --freeze-bn, --head-start, --precision (issue 23)."""

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, adapt_tiny, cli, interrupt_at, read_jsonl
from test_inputs import assert_one_line_error

BN_STATS = ("running_mean", "running_var")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 'pretrained' test_resnet backbone: random weights, and BatchNorm statistics no training would produce."""
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    state = backbone.state_dict()
    for k in state:
        if k.endswith("running_mean"):
            state[k] = torch.full_like(state[k], 0.25)
        elif k.endswith("running_var"):
            state[k] = torch.full_like(state[k], 3.0)
    path = tmp_path_factory.mktemp("weights") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _backbone_stats(run):
    model = load_file(run / "model.safetensors")
    return {k: v for k, v in model.items() if k.startswith("backbone.") and k.endswith(BN_STATS)}


@pytest.mark.parametrize("bn_stats", ["train", "target"])
def test_freeze_bn_keeps_the_pretrained_statistics(domains, tmp_path, weights, bn_stats):
    source, target = domains
    args = ["--iters", "4", "--weights", weights, "--bn-stats", bn_stats, "--head-start", "0"]
    frozen = adapt_tiny(source, target, tmp_path / "frozen", *args, "--freeze-bn")
    moving = adapt_tiny(source, target, tmp_path / "moving", *args, "--no-freeze-bn")
    pretrained = load_file(weights)
    for key, value in _backbone_stats(frozen).items():
        assert torch.equal(value, pretrained[key.removeprefix("backbone.")]), key
    assert any(not torch.equal(v, pretrained[k.removeprefix("backbone.")]) for k, v in _backbone_stats(moving).items())
    # The weights still train, and the bottleneck's statistics are the run's own.
    model = load_file(frozen / "model.safetensors")
    assert not torch.equal(model["backbone.conv1.0.weight"], pretrained["conv1.0.weight"])
    assert not torch.equal(model["bottleneck.1.running_mean"], torch.zeros_like(model["bottleneck.1.running_mean"]))


def test_head_start_fits_the_head_before_fine_tuning(domains, tmp_path, weights):
    from golabels_cli.config import build_config
    from golabels_cli.data import eval_loader, eval_transform
    from golabels_cli.training import build, fit_head

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False,
                        "weights": str(weights), "image_size": 32, "device": "cpu", "workers": 0, "batch_size": 4,
                        "head_start": 40, "cache_dir": str(tmp_path / "cache")})
    t = build(cfg)
    backbone = {k: v.clone() for k, v in t.model.backbone.state_dict().items()}
    head = {k: v.clone() for k, v in t.model.head.state_dict().items()}

    def source_loss():
        t.model.eval()
        with torch.no_grad():
            logits = torch.cat([t.model(x)[0] for x, _ in eval_loader(t.source, eval_transform(t.data_config), 16, 0)])
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(t.source.labels)))

    before = source_loss()
    fit_head(t)
    assert source_loss() < before
    assert all(torch.equal(v, t.model.backbone.state_dict()[k]) for k, v in backbone.items())  # the backbone is untouched
    assert any(not torch.equal(v, t.model.head.state_dict()[k]) for k, v in head.items())


def test_head_start_is_not_counted_in_iters_and_is_reproducible(domains, tmp_path, weights):
    source, target = domains
    args = ["--iters", "3", "--weights", weights, "--log-every", "1", "--cache-dir", tmp_path / "cache"]
    runs = [adapt_tiny(source, target, tmp_path / name, *args, "--head-start", steps)
            for name, steps in (("a", 30), ("b", 30), ("none", 0))]
    assert [r["iter"] for r in read_jsonl(runs[0] / "metrics.jsonl")] == [1, 2, 3]
    a, b, none = (load_file(r / "model.safetensors") for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    assert not torch.equal(a["head.weight"], none["head.weight"])


def test_fine_tuning_defaults_apply_to_pretrained_fine_tuning_only():
    from golabels_cli.config import DEFAULT_FREEZE_BN, DEFAULT_HEAD_START, build_config

    base = {"source": "s", "target": "t"}
    tuned = build_config(base)
    assert (tuned.freeze_bn, tuned.head_start, tuned.precision) == (DEFAULT_FREEZE_BN, DEFAULT_HEAD_START, "auto")
    for other in ({"freeze_backbone": True}, {"pretrained": False}):
        cfg = build_config({**base, **other})
        assert (cfg.freeze_bn, cfg.head_start) == (False, 0)
    assert build_config({**base, "pretrained": False, "weights": "w.safetensors"}).head_start == DEFAULT_HEAD_START


@pytest.mark.parametrize("args, words", [
    (["--freeze-backbone", "--freeze-bn"], "--freeze-bn applies to fine-tuning"),
    (["--freeze-backbone", "--head-start", "10"], "--head-start applies to fine-tuning"),
    (["--head-start", "10"], "randomly initialized"),
    (["--freeze-bn"], "randomly initialized"),
    (["--head-start", "-1"], "--head-start must be a non-negative integer"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--precision", "fp16"], "--precision fp16 needs a CUDA GPU"),
])
def test_fine_tuning_options_are_checked(domains, tmp_path, args, words):
    source, target = domains
    out = tmp_path / "run"
    assert_one_line_error(cli("adapt", source, target, *TINY, *args, "--out", out), words)
    assert not out.exists()


def test_bf16_autocast_trains_on_the_cpu(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "bf16", "--iters", "4", "--log-every", "1", "--precision", "bf16")
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(r["loss_cls"])) for r in rows)
    fp32 = adapt_tiny(source, target, tmp_path / "fp32", "--iters", "4", "--log-every", "1", "--precision", "fp32")
    assert [r["loss_cls"] for r in read_jsonl(fp32 / "metrics.jsonl")] != [r["loss_cls"] for r in rows]  # autocast really ran


def test_a_run_from_before_these_options_resumes_as_it_started_and_exports(domains, tmp_path, weights):
    """A checkpoint whose config has no freeze_bn, head_start, precision or logger (written before
    issue 23) resumes with the backbone's BatchNorm in train mode, as it was trained, not with
    today's default, and exports."""

    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted

    source, target = domains
    values = {"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "weights": str(weights),
              "image_size": 32, "device": "cpu", "workers": 0, "batch_size": 4, "iters": 6}
    whole = build_config({**values, "freeze_bn": False})
    training.adapt(whole, out=tmp_path / "whole")

    interrupt = interrupt_at(3)

    with pytest.raises(Interrupted):
        training.adapt(build_config({**values, "freeze_bn": False}), out=tmp_path / "old", progress=interrupt)
    path = tmp_path / "old" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    for key in ("freeze_bn", "head_start", "precision", "logger"):
        del checkpoint["config"][key]
    torch.save(checkpoint, path)
    training.resume(tmp_path / "old")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "old" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    exported = cli("export", tmp_path / "old", "--onnx", "--json")
    assert exported.exit_code == 0, exported.stderr
