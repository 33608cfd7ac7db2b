"""golabels' Python API (docs/python.md): the documented example runs as it is, and the functions
check their inputs as the commands do."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import golabels

DOCS = Path(__file__).resolve().parent.parent / "docs" / "python.md"


def test_the_documented_example_runs_as_it_is(tmp_path):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("runs/example ") and lines[1].startswith("accuracy ")
    assert (tmp_path / "runs" / "example" / "model.onnx").is_file() and lines[2].split()[1] in ("circle", "square", "triangle")


def test_import_golabels_loads_no_torch():
    code = "import sys, golabels; print('torch' in sys.modules, golabels.__version__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()[0] == "False"


def test_the_functions_check_their_inputs_as_the_commands_do(domains, tmp_path):
    with pytest.raises(golabels.InputError, match="unknown option 'batchsize'"):
        golabels.config(*domains, batchsize=4)
    with pytest.raises(golabels.InputError, match="momentum must be in"):
        golabels.config(*domains, momentum=5.0)
    with pytest.raises(golabels.InputError, match="lr can't change on resume"):
        golabels.resume(tmp_path, lr=0.1)
    with pytest.raises(golabels.InputError, match="starts worker processes"):
        golabels.adapt(golabels.config(*domains, devices=2, device="cpu"), out=tmp_path / "run")
    with pytest.raises(golabels.InputError, match="stdin"):
        list(golabels.predict(tmp_path, ["-"]))


def test_adapt_returns_the_run_and_load_config_replays_it(domains, tmp_path):
    cfg = golabels.config(*domains, backbone="test_resnet", pretrained=False, image_size=32, device="cpu", workers=0, batch_size=4, iters=2)
    run = golabels.adapt(cfg, out=tmp_path / "run")
    assert run.run_dir == tmp_path / "run" and run.model_path.is_file() and run.summary["iters"] == 2
    replay = golabels.adapt(golabels.load_config(run.run_dir / "config.yaml"), out=tmp_path / "replay")
    assert replay.model_path.read_bytes() == run.model_path.read_bytes()
    with pytest.raises(golabels.InputError, match="already exists"):
        golabels.adapt(cfg, out=tmp_path / "run")
    labels = list(golabels.predict(run.run_dir, [domains[1]], device="cpu"))
    assert len(labels) == 24 and all(label.label in labels[0].classes for label in labels)


def test_a_run_resolves_its_config_once_and_never_changes_the_callers(domains, tmp_path):
    """build() resolves on a copy (training/resolve.py): the config passed in keeps its unset
    defaults, and the run's config.yaml is the resolved config the model was built from."""
    import dataclasses

    from golabels_cli.config import to_yaml
    from golabels_cli.training import build

    source, target = domains
    cfg = golabels.config(source, target, backbone="test_resnet", pretrained=False, batch_size=4, iters=2, device="cpu", workers=0)
    before = dataclasses.asdict(cfg)
    t = build(cfg)
    assert dataclasses.asdict(cfg) == before and cfg.image_size is None and cfg.balance_source is None
    assert t.cfg is not cfg and t.cfg.image_size == t.data_config["input_size"][1] and t.cfg.balance_source is False
    run = golabels.adapt(cfg, out=tmp_path / "run")
    assert dataclasses.asdict(cfg) == before
    assert (run.run_dir / "config.yaml").read_text() == to_yaml(t.cfg)
