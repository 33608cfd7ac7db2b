"""--bn-stats: the BatchNorm statistics a model is evaluated and shipped with."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, read_jsonl

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _split(state):
    buffers = {k: v for k, v in state.items() if k.endswith(BN_BUFFERS)}
    return buffers, {k: v for k, v in state.items() if k not in buffers}


@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])
def test_target_statistics_change_only_the_shipped_statistics(domains, tmp_path, frozen):
    source, target = domains
    extra = ["--iters", "6", "--eval-every", "3", "--eval-dir", target,
             *(["--freeze-backbone", "--method", "cdan-e+bnm"] if frozen else [])]
    plain = adapt_tiny(source, target, tmp_path / "train", *extra, "--bn-stats", "train")
    adabn = adapt_tiny(source, target, tmp_path / "target", *extra)  # the default for an adversarial method

    # Training is untouched: every weight equal, and the checkpoints hold training's own statistics.
    plain_buffers, plain_weights = _split(load_file(plain / "model.safetensors"))
    adabn_buffers, adabn_weights = _split(load_file(adabn / "model.safetensors"))
    assert plain_weights.keys() == adabn_weights.keys() and all(torch.equal(plain_weights[k], adabn_weights[k]) for k in plain_weights)
    ckpt_plain = torch.load(plain / "checkpoint.pt", weights_only=True)["model"]
    ckpt_adabn = torch.load(adabn / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(ckpt_plain[k], ckpt_adabn[k]) for k in ckpt_plain)

    # The shipped statistics are re-estimated: the bottleneck's always, the backbone's unless frozen.
    changed = {k.rsplit(".", 1)[0] for k in plain_buffers
               if k.endswith("running_mean") and not torch.equal(plain_buffers[k], adabn_buffers[k])}
    assert "bottleneck.1" in changed
    assert (not any(k.startswith("backbone.") for k in changed)) if frozen else any(k.startswith("backbone.") for k in changed)

    # What the run reports is what it ships, and the other statistics' oracle is logged beside it.
    rows = [r for r in read_jsonl(adabn / "metrics.jsonl") if "target_acc" in r]
    assert [r["iter"] for r in rows] == [3, 6] and all("target_acc_train_bn" in r for r in rows)
    plain_rows = [r for r in read_jsonl(plain / "metrics.jsonl") if "target_acc" in r]
    assert [r["target_acc_train_bn"] for r in rows] == [r["target_acc"] for r in plain_rows]
    summary = json.loads((adabn / "summary.json").read_text())
    result = cli("eval", adabn, target, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["target_acc"])


def test_bn_stats_defaults_to_target_except_for_source_only():
    from golabels_cli.config import build_config

    assert build_config({"source": "s", "target": "t"}).bn_stats == "target"
    assert build_config({"source": "s", "target": "t", "method": "dann"}).bn_stats == "target"
    assert build_config({"source": "s", "target": "t", "method": "source-only"}).bn_stats == "train"
    assert build_config({"source": "s", "target": "t", "bn_stats": "train"}).bn_stats == "train"


def test_bn_stats_is_checked(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--bn-stats", "source", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "unknown bn-stats 'source'" in result.stderr
