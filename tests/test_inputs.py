"""Bad input: exit 2, a one-line error, no traceback, and nothing written."""

import os
import shutil
import time

import torch
from safetensors.torch import save_file

from conftest import TINY, cli, cli_subprocess


def assert_one_line_error(result, *fragments, code=2):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_missing_source(domains, tmp_path):
    _, target = domains
    result = cli("adapt", tmp_path / "nope", target, *TINY, "--out", tmp_path / "run")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "run").exists()


def test_file_instead_of_folder(domains, tmp_path):
    source, _ = domains
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_one_line_error(cli("adapt", source, f, *TINY, "--out", tmp_path / "run"), "is a file")


def test_empty_folders(domains, tmp_path):
    source, target = domains
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("adapt", tmp_path / "empty", target, *TINY), "no class sub-folders")
    assert_one_line_error(cli("adapt", source, tmp_path / "empty", *TINY), "has no images")


def test_source_with_one_class(domains, tmp_path):
    source, target = domains
    one = tmp_path / "one"
    shutil.copytree(source / "circle", one / "circle")
    assert_one_line_error(cli("adapt", one, target, *TINY, "--out", tmp_path / "run"), "only one class")
    assert not (tmp_path / "run").exists()


def test_class_folder_without_images(copy_domains, tmp_path):
    source, target = copy_domains
    (source / "hexagon").mkdir()
    (source / "hexagon" / "notes.txt").write_text("no images here")
    assert_one_line_error(cli("adapt", source, target, *TINY), "hexagon", "no images")


def test_unreadable_images_are_skipped_and_counted(copy_domains, tmp_path):
    source, target = copy_domains
    (source / "circle" / "zero.png").write_bytes(b"")
    (source / "square" / "text.jpg").write_text("this is not a jpeg")
    (target / "garbage.png").write_bytes(os.urandom(300))
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    assert "skipping unreadable source image" in result.stderr and "zero.png" in result.stderr
    import json
    summary = json.loads(result.stdout)
    assert summary["skipped"] == {"source": 2, "target": 1, "eval": 0}


def test_all_unreadable_is_an_error(tmp_path, domains):
    _, target = domains
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        (tmp_path / "src" / c / "x.png").write_bytes(b"not a png")
    assert_one_line_error(cli("adapt", tmp_path / "src", target, *TINY, "--quiet"), "unreadable")


def test_unknown_backbone_suggests_close_names(domains):
    source, target = domains
    line = assert_one_line_error(cli("adapt", source, target, "--backbone", "resnet5O", "--no-pretrained"), "unknown backbone")
    assert "resnet50" in line


def test_unknown_method_and_mode(domains):
    source, target = domains
    line = assert_one_line_error(cli("adapt", source, target, *TINY, "--method", "cdane"), "unknown method")
    assert "cdan-e" in line
    assert_one_line_error(cli("adapt", source, target, *TINY, "--domain-labels", "gogo"), "unknown domain-labels")
    # The missing folders are said first, whatever else is wrong (as before the method registry).
    assert_one_line_error(cli("adapt", "--method", "cdane"), "adapt needs a SOURCE and a TARGET folder")


def test_bad_config_key(domains, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch-sise: 4\n")
    line = assert_one_line_error(cli("adapt", "--config", cfg), "unknown option")
    assert "batch-size" in line


def test_real_process_prints_no_traceback(domains, tmp_path):
    source, _ = domains
    result = cli_subprocess("adapt", source, tmp_path / "missing", *TINY)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:"), result.stderr
    assert result.stdout == ""


def test_pretrained_offline_fails_fast_with_hint(domains, tmp_path):
    source, target = domains
    started = time.monotonic()
    result = cli_subprocess("adapt", source, target, "--backbone", "test_resnet", "--image-size", "32", "--out", tmp_path / "run",
                            env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--weights" in error[0] and "--no-pretrained" in error[0]
    # the library's words in whole sentences (or whole words and an ellipsis), never cut mid-word
    cause = error[0].split(" (", 1)[1].split(") —")[0]
    assert cause.endswith((".", "…")) or len(cause) < 150, cause
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# ---- --weights ---------------------------------------------------------------------------------


def backbone_state(name, with_classifier=True):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=10 if with_classifier else 0)
    return model.state_dict()


def test_weights_safetensors_and_pth_load_and_ignore_classifier(domains, tmp_path):
    source, target = domains
    state = backbone_state("test_resnet")
    assert any(k.startswith("fc.") for k in state)
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        tiny = [a for a in TINY if a != "--no-pretrained"]
        result = cli("adapt", source, target, *tiny, "--iters", "1", "--weights", tmp_path / name, "--out", tmp_path / f"run-{name}",
                     "--quiet")
        assert result.exit_code == 0, result.stderr
    # The loaded tensors are the ones in the file before training moved them: check one frozen-by-lr-0 run.
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--lr", "1e-12", "--weights", tmp_path / "w.safetensors",
                 "--out", tmp_path / "run-check", "--quiet", "--method", "source-only")
    assert result.exit_code == 0, result.stderr
    from safetensors.torch import load_file
    trained = load_file(str(tmp_path / "run-check" / "model.safetensors"))
    key = "conv1.0.weight"
    assert torch.allclose(trained["backbone." + key], state[key], atol=1e-6)


def test_weights_from_a_golabels_run_start_from_its_backbone(domains, tmp_path):
    """--weights RUN/model.safetensors: a source-only run's backbone is where an adapted run starts."""
    from safetensors.torch import load_file

    source, target = domains
    first = cli("adapt", source, target, *TINY, "--iters", "2", "--method", "source-only", "--out", tmp_path / "so", "--quiet")
    assert first.exit_code == 0, first.stderr
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--lr", "1e-12", "--weights", tmp_path / "so" / "model.safetensors",
                 "--out", tmp_path / "from-so", "--quiet", "--method", "source-only")
    assert result.exit_code == 0, result.stderr
    before, after = load_file(str(tmp_path / "so" / "model.safetensors")), load_file(str(tmp_path / "from-so" / "model.safetensors"))
    backbone = [k for k in before if k.startswith("backbone.") and k.endswith("weight")]
    assert backbone and all(torch.allclose(before[k], after[k], atol=1e-6) for k in backbone)


def test_weights_with_unexpected_or_missing_keys_are_named(domains, tmp_path):
    source, target = domains
    state = backbone_state("test_resnet")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "extra.safetensors"))
    assert_one_line_error(cli("adapt", source, target, *TINY, "--weights", tmp_path / "extra.safetensors"), "unexpected keys",
                          "extra.weight")
    state = backbone_state("test_resnet")
    del state["conv1.0.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    assert_one_line_error(cli("adapt", source, target, *TINY, "--weights", tmp_path / "missing.safetensors"), "missing keys",
                          "conv1.0.weight")


def test_weights_for_another_architecture(domains, tmp_path):
    source, target = domains
    save_file(backbone_state("test_efficientnet"), str(tmp_path / "eff.safetensors"))
    assert_one_line_error(cli("adapt", source, target, *TINY, "--weights", tmp_path / "eff.safetensors"), "another architecture")


def test_pickled_or_corrupt_weights_are_refused(domains, tmp_path):
    source, target = domains

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"conv1.0.weight": Evil()}, tmp_path / "evil.pth")
    assert_one_line_error(cli("adapt", source, target, *TINY, "--weights", tmp_path / "evil.pth"), "holds pickled Python objects")
    assert not (tmp_path / "pwned").exists()
    save_file(backbone_state("test_resnet"), str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("adapt", source, target, *TINY, "--weights", tmp_path / "cut.safetensors"), "cannot read weights")


def test_a_long_library_message_is_cut_between_sentences_or_words_never_mid_word():
    from golabels_cli.errors import reason

    hub = OSError("An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local "
                  "cache. Please check your connection and try again or make sure your Internet connection is on.")
    assert reason(hub) == ("An error happened while trying to locate the file on the Hub and we cannot find the requested files "
                           "in the local cache.")
    words = reason(ValueError("word " * 100))
    assert words.endswith("word…") and len(words) <= 160
    assert reason(ValueError("short")) == "short" and reason(KeyError()) == "KeyError"

