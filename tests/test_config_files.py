"""Config files read as untrusted input: what YAML would accept silently is refused in one line,
before anything is created."""

import pytest

from conftest import TINY, cli_subprocess, one_error_line, tree


@pytest.mark.parametrize("text, words", [
    ("iters: 4\nbatch-size: 4\niters: 400\n", ["gives 'iters' twice (lines 1 and 3)"]),
    ("iters: 4\nbatch-size: 4\nbatch_size: 8\n", ["one option twice, as 'batch-size' and 'batch_size' (lines 2 and 3)"]),
    ("seed: " + "9" * 5000 + "\n", ["an integer of 5000 digits at line 1"]),
    ("iters: 4\nseed: -" + "1" * 41 + "\n", ["an integer of 41 digits at line 2"]),
], ids=["duplicate-key", "duplicate-after-folding", "5000-digits", "41-digits"])
def test_a_config_file_yaml_would_read_silently_wrong_is_refused(domains, tmp_path, text, words):
    source, target = domains
    (tmp_path / "c.yaml").write_text(text)
    before = tree(tmp_path)
    result = cli_subprocess("adapt", source, target, *TINY, "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert result.returncode == 2
    one_error_line(result, *words)
    assert tree(tmp_path) == before


def test_long_but_sane_numbers_still_read(domains, tmp_path):
    from golabels_cli.config import build_config, load_yaml

    source, target = domains
    (tmp_path / "c.yaml").write_text(f"source: {source}\ntarget: {target}\nseed: 4294967295\nweight-decay: 1e-3\n")
    cfg = build_config(load_yaml(tmp_path / "c.yaml"))
    assert cfg.seed == 2**32 - 1 and cfg.weight_decay == 0.001
