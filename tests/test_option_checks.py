"""An option's value or a config file refused before any work (issues 26, 35): exit 2, one `error:`
line naming what is wrong, nothing created or lost; and the values that look odd but are taken."""

import os
from pathlib import Path

import pytest
from conftest import TINY, cli, cli_subprocess, one_error_line, tree

CONFIG_CASES = [
    ("source: [1, 2]\n", "source must be a string"),
    ("min-crop: abc\n", "min-crop must be a finite number"),
    ("iters: true\n", "iters must be an integer"),
    ("pretrained: 'false'\n", "pretrained must be true or false"),
    ("momentum: 5\n", "momentum must be in [0, 1)"),
    ("weight-decay: .nan\n", "weight-decay must be a finite number"),
    ("lr: .inf\n", "lr must be a finite number"),
    ("trade-off: -1\n", "trade-off must be a non-negative number"),
    ("image-size: 100000\n", "--image-size 100000"),
    ("exist-ok: 'yes'\n", "exist-ok must be true or false"),
    ("out: 3\n", "out must be a string"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "aliases"),
    ("[1, 2]\n", "must be a mapping"),
]


@pytest.mark.parametrize("text,words", CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES])
def test_bad_config_values_exit_2_before_a_run_directory_exists(domains, tmp_path, text, words):
    source, target = domains
    config = tmp_path / "config.yaml"
    # A tiny valid run, its line for the bad key replaced by the bad line (a key given twice is
    # refused): a value let through costs seconds, not a default run.
    tiny = [f"source: {source}", f"target: {target}", "backbone: test_resnet", "pretrained: false", "image-size: 32",
            "device: cpu", "workers: 0", "batch-size: 4", "iters: 1"]
    bad_key = text.split(":")[0]
    config.write_text(text if text.startswith("[") else "".join(f"{line}\n" for line in tiny if line.split(":")[0] != bad_key) + text)
    result = cli("adapt", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value,words", [
    ("--lr", "inf", "lr must be a finite number"),
    ("--trade-off", "nan", "trade-off must be a finite number"),
    ("--image-size", "100000", "needs at least"),
    ("--min-crop", "0", "--min-crop must be in (0, 1]"),
])
def test_bad_option_values_exit_2_before_a_run_directory_exists(domains, tmp_path, flag, value, words):
    source, target = domains
    result = cli("adapt", source, target, *TINY, flag, value, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, words)
    assert not (tmp_path / "run").exists()


def test_an_oversized_config_file_is_refused_unread(domains, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("# padding\n" * 120_000)
    result = cli("adapt", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "larger than 1 MiB")


def test_yaml_numbers_without_a_dot_still_read_as_numbers(domains, tmp_path):
    from golabels_cli.config import build_config, load_yaml

    source, target = domains
    config = tmp_path / "config.yaml"
    config.write_text(f"source: {source}\ntarget: {target}\nweight-decay: 1e-3\n")
    assert build_config(load_yaml(config)).weight_decay == 0.001


@pytest.mark.parametrize("args,words", [
    (["adapt", "a", "b", "--lr", "abc"], ["Invalid value for '--lr'", "see `golabels adapt --help`"]),
    (["adapt", "a", "b", "iters=300"], ["unexpected extra argument", "options are written --iters 300, not iters=300"]),
    (["adapt", "--bogus"], ["No such option: --bogus"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
])
def test_usage_errors_are_one_line_too(args, words):
    result = cli_subprocess(*args, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "╭" not in result.stderr
    one_error_line(result, *words)


def test_error_lines_stay_one_line_whatever_the_paths_hold(tmp_path):
    result = cli("eval", tmp_path / "no\nsuch\rrun", tmp_path)
    assert result.exit_code == 2
    assert "no\\nsuch\\rrun" in one_error_line(result)


@pytest.mark.parametrize("command", ["adapt", "demo"])
def test_a_seed_beyond_the_generators_range_is_refused(domains, tmp_path, command):
    args = ["adapt", *domains, *TINY] if command == "adapt" else ["demo"]
    result = cli(*args, "--seed", str(2**63), "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "--seed", "4294967295")
    assert not (tmp_path / "run").exists()


def test_a_batch_beyond_memory_is_refused_with_the_backbones_own_image_size(domains, tmp_path):
    tiny = [a for a in TINY if a not in ("--image-size", "32")]
    result = cli("adapt", *domains, *tiny, "--batch-size", "100000000000", "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "the backbone's input size 160x160 with --batch-size 100000000000 needs at least")
    assert not (tmp_path / "run").exists()
    # --print-config only writes the config down: it may be meant for a larger machine
    printed = cli("adapt", *domains, *tiny, "--batch-size", "100000000000", "--print-config")
    assert printed.exit_code == 0 and "batch-size: 100000000000" in printed.stdout and "image-size: 160" in printed.stdout


def test_a_config_file_that_is_a_fifo_is_never_read(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")
    before = tree(tmp_path)
    result = cli_subprocess("adapt", "--config", tmp_path / "config.yaml", "--out", tmp_path / "run", timeout=60)
    assert result.returncode == 2
    one_error_line(result, "config.yaml is not a regular file")
    assert tree(tmp_path) == before


def _pickled(path: Path) -> Path:
    import torch

    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a module: Python objects, not a state dict
    return path


@pytest.mark.parametrize("kind,words", [
    ("pickle", "holds pickled Python objects"),
    ("device", "/dev/zero is a device, not a regular file"),
    ("fifo", "is a FIFO, not a regular file"),
])
def test_weights_that_are_not_a_state_dict_are_one_line(domains, tmp_path, kind, words):
    weights = {"pickle": lambda: _pickled(tmp_path / "model.pth"), "device": lambda: Path("/dev/zero"),
               "fifo": lambda: (os.mkfifo(tmp_path / "w.pth"), tmp_path / "w.pth")[1]}[kind]()
    before = tree(tmp_path)
    result = cli_subprocess("adapt", *domains, *TINY, "--weights", weights, "--out", tmp_path / "run", timeout=120)
    assert result.returncode == 2
    one_error_line(result, words)
    assert "Warning" not in result.stderr  # torch's advice on unpickling is not for golabels' users
    if kind != "pickle":  # only reading it tells a pickle; a FIFO or a device is refused before the folders are scanned
        assert "source:" not in result.stderr
    assert tree(tmp_path) == before
