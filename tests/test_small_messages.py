"""Each small thing a careless user or an edited file can do gets one line that says what to do,
never a library's words or a second line (issue 44's item 10)."""

import json
import shutil

import pytest

from conftest import TINY, adapt_tiny, cli, cli_subprocess, one_error_line, tree


def test_a_class_named_with_a_carriage_return_is_drawn_without_a_font_warning(domains, tmp_path):
    pytest.importorskip("matplotlib")
    source, target = domains
    shutil.copytree(source, tmp_path / "source")
    (tmp_path / "source" / "circle").rename(tmp_path / "source" / "cir\rcle")
    shutil.copytree(tmp_path / "source", tmp_path / "labeled")
    result = cli_subprocess("adapt", tmp_path / "source", target, *TINY, "--iters", "2", "--out", tmp_path / "run", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # the mosaic drew the name: no Glyph warning
    result = cli_subprocess("eval", tmp_path / "run", tmp_path / "labeled", "--plots")
    assert result.returncode == 0, result.stderr
    assert "Glyph" not in result.stderr and "Warning" not in result.stderr, result.stderr


def test_a_huge_target_loss_weight_is_named_a_divergence(domains, tmp_path):
    result = cli("adapt", *domains, *TINY, "--iters", "4", "--method", "bnm", "--target-loss-weight", "1e308", "--out", tmp_path / "run")
    assert result.exit_code == 1
    one_error_line(result, "training diverged at iteration", "loss_target = nan")


@pytest.mark.parametrize("method, hint", [("mcc", "--method cdan-e+mcc"), ("source-only", "leave --domain-labels out")])
def test_domain_labels_without_a_discriminator_are_refused(domains, tmp_path, method, hint):
    before = tree(tmp_path)
    result = cli("adapt", *domains, *TINY, "--method", method, "--domain-labels", "go", "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, f"--domain-labels go sets the targets of a discriminator, and --method {method} has none", hint)
    assert tree(tmp_path) == before


def test_report_json_stays_strict_json_whatever_summary_json_holds(domains, tmp_path):
    run = adapt_tiny(*domains, tmp_path / "run", "--iters", "2")
    summary = json.loads((run / "summary.json").read_text())
    summary["target_acc"] = float("nan")
    (run / "summary.json").write_text(json.dumps(summary))  # Python writes NaN, which is not JSON
    result = cli_subprocess("report", run, "--json", "--no-plots")
    assert result.returncode == 0, result.stderr

    def refuse(constant):
        raise ValueError(constant)

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data["summary"]["target_acc"] is None


def test_eval_and_export_of_an_onnx_file_say_it_is_for_predict(exported, domains, tmp_path):
    run, _ = exported
    for args in (["eval", run / "model.onnx", domains[1]], ["export", run / "model.onnx", "--output", tmp_path / "m.onnx"]):
        result = cli(*args)
        assert result.exit_code == 2
        one_error_line(result, "is an ONNX model, which golabels predict runs", "pass its run directory or its model.safetensors")
    assert not (tmp_path / "m.onnx").exists()
