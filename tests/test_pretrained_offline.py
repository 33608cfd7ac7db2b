"""Pretrained weights without a network (issue 45 item 5): detected once, before any retry loop."""

import os
import subprocess
import sys
import time

import timm
import torch
from safetensors.torch import load_file, save_file

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def adapt(domains, out, env, *extra):
    source, target = domains
    return subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", str(source), str(target), "--backbone", "test_resnet",
                           "--image-size", "32", "--iters", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                           "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=300)


def offline_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}
    return {**env, "HF_ENDPOINT": UNREACHABLE, "HF_HOME": str(tmp_path / "hf"), **extra}


def test_an_unreachable_hub_is_one_line_at_once(domains, tmp_path):
    started = time.monotonic()
    result = adapt(domains, tmp_path / "run", offline_env(tmp_path))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in result.stderr.splitlines() if "error" in line.lower()] and len(errors) == 1, result.stderr
    assert "cannot fetch pretrained weights for test_resnet (127.0.0.1 cannot be reached" in errors[0]
    assert "not in the local cache) — pass --weights FILE" in errors[0] and "Retrying" not in result.stderr
    assert time.monotonic() - started < 30  # (55 s of retries before)
    assert not (tmp_path / "run").exists()


def test_weights_in_the_local_cache_load_without_the_hub(domains, tmp_path):
    """The hub's cache as huggingface_hub lays it out, holding test_resnet's weights: an
    unreachable hub is no error then, and those weights are the ones trained from."""
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    torch.manual_seed(5)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() and "running" not in k else v
             for k, v in backbone.state_dict().items()}
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    result = adapt(domains, tmp_path / "run", offline_env(tmp_path), "--freeze-backbone", "--method", "mcc")
    assert result.returncode == 0, result.stderr
    shipped = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(shipped["backbone.conv1.0.weight"], state["conv1.0.weight"])
