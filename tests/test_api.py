"""golabels' Python API (docs/python.md): the documented example runs as it is, and the functions
check their inputs as the commands do."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import golabels
from golabels_cli.errors import InputError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "python.md"


def test_the_documented_example_runs_as_it_is(tmp_path):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("runs/example ") and lines[1].startswith("accuracy ")
    assert (tmp_path / "runs" / "example" / "model.onnx").is_file() and lines[2].split()[1] in ("circle", "square", "triangle")
    assert "(chance 0.333)" in lines[1]
    again = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr  # a user runs an example twice
    assert "Removed" not in again.stderr and "onnx_ir" not in again.stderr  # the exporter's INFO lines stay quiet


def test_the_functions_speak_of_arguments_not_flags(domains, tmp_path):
    import golabels
    from golabels_cli.api import api_words

    source, target = domains
    cfg = golabels.config(source, target, backbone="test_resnet", pretrained=False, image_size=32, device="cpu", workers=0,
                          batch_size=4, iters=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(golabels.InputError) as caught:
        golabels.adapt(cfg, out=tmp_path / "run")
    assert "pass another out, or exist_ok=True" in str(caught.value) and "--" not in str(caught.value)
    assert api_words("resume with: golabels adapt --resume runs/x") == "resume with: golabels.resume('runs/x')"
    assert api_words("pass --iters 4 or more, or --no-balance-source") == "pass iters=4 or more, or balance_source=False"
    assert api_words("rerun with --debug") == "rerun with --debug"  # not an argument: left as it is


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


TINY_OPTIONS = dict(backbone="test_resnet", pretrained=False, image_size=32, device="cpu", workers=0, batch_size=4, iters=2)


@pytest.mark.parametrize("change, words", [
    ({"iters": -5}, "iters must be a positive integer"),
    ({"target_loss_weight": -3}, "target_loss_weight must be a non-negative number"),
    ({"method": "bogus"}, "unknown method 'bogus'"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"batch_size": True}, "batch-size must be an integer"),
], ids=["iters", "target-loss-weight", "method", "lr-nan", "bool-batch"])
def test_adapt_checks_a_config_changed_after_it_was_made(domains, tmp_path, change, words):
    from conftest import tree

    cfg = golabels.config(*domains, **TINY_OPTIONS)
    for name, value in change.items():
        setattr(cfg, name, value)
    before = tree(tmp_path)
    with pytest.raises(InputError, match=re.escape(words)):
        golabels.adapt(cfg, out=tmp_path / "run")
    assert tree(tmp_path) == before  # nothing created: not config.yaml, not metrics.jsonl


def test_a_hand_built_config_trains_like_a_made_one(domains, tmp_path):
    source, target = domains
    run = golabels.adapt(golabels.AdaptConfig(source=str(source), target=str(target), **TINY_OPTIONS), out=tmp_path / "run")
    assert run.summary["method"] == "cdan-e" and run.model_path.is_file()
    with pytest.raises(InputError, match="adapt takes an AdaptConfig"):
        golabels.adapt({"source": str(source)}, out=tmp_path / "other")


def test_evaluate_export_and_predict_check_their_arguments(exported, domains, tmp_path):
    from conftest import tree

    run, target = exported[0], domains[1]
    before = tree(run)
    for call, words in [
        (lambda: golabels.evaluate(run, target, batch_size=0), "batch_size must be an integer of at least 1, got 0"),
        (lambda: golabels.evaluate(run, target, workers=-1), "workers must be an integer of at least 0, got -1"),
        (lambda: golabels.evaluate(run, target, device="gpu"), "unknown device 'gpu'"),
        (lambda: golabels.export_onnx(run, tmp_path / "m.onnx", opset="18"), "opset must be an integer, got '18'"),
        (lambda: golabels.export_onnx(run, tmp_path / "m.onnx", batch=0), "batch must be positive, not 0"),
        (lambda: list(golabels.predict(run, [target], batch_size=0)), "batch_size must be an integer of at least 1"),
        (lambda: list(golabels.predict(run, [3])), "images must be paths (str or Path), got int 3"),
        (lambda: list(golabels.predict(run, 3)), "images must be a path or an iterable of paths, got int"),
        # issue 54 item 14: bytes were walked as ints ("got int 47"); None, bytes or a list as a path were TypeErrors
        (lambda: list(golabels.predict(run, b"/p")), "images must be a path (str or Path), got bytes b'/p'"),
        (lambda: list(golabels.predict(None, [target])), "model must be a path (str or Path), got NoneType"),
        (lambda: golabels.evaluate(run, [target]), "data_dir must be a path (str or Path), got list"),
        (lambda: golabels.export_onnx(b"run"), "run_or_model must be a path (str or Path), got bytes"),
        (lambda: golabels.report(None), "run_dir must be a path (str or Path), got NoneType"),
        (lambda: golabels.report(b"run"), "run_dir must be a path (str or Path), got bytes"),
        (lambda: golabels.report([run]), "run_dir must be a path (str or Path), got list"),
        (lambda: golabels.report(run / "config.yaml"), "config.yaml is a file, not a folder"),
        (lambda: golabels.resume(None), "run_dir must be a path (str or Path), got NoneType"),
    ]:
        with pytest.raises(InputError, match=re.escape(words)):
            call()
    assert tree(run) == before and not (tmp_path / "m.onnx").exists()


def test_predict_takes_one_path_as_one_path(exported, domains):
    """A string is one path, never its characters: "/" once walked the whole filesystem."""
    run, target = exported[0], domains[1]
    one = [p.path for p in golabels.predict(run, str(target))]
    assert one == [p.path for p in golabels.predict(run, [target])] and len(one) == 24
    assert [p.path for p in golabels.predict(run, target)] == one  # a Path too
