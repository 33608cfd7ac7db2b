"""Run directories written by an earlier golabels keep working: they resume, evaluate and export.

tests/fixtures/runs-8a82bdc holds two tiny runs written by commit 8a82bdc (the code before the
`training/` package): `interrupted`, stopped by Ctrl-C at iteration 2 of 4, and `finished`, the
same run uninterrupted (its checkpoint.pt and results.png left out to keep the fixture small).
Their images are generated again here, as they were: make_two_domains, 4 per class, 32 px, seed 1,
in a fresh process (its target noise comes from PIL's effect_noise, which draws from the C
library's rand(): the same images only from a process where nothing drew from it before).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli

FIXTURE = Path(__file__).parent / "fixtures" / "runs-8a82bdc"
WRITTEN_AT = "/tmp/fx/data"  # where the runs' images were when they were written


@pytest.fixture
def old_runs(tmp_path):
    """The fixture's runs copied into tmp_path, their folders pointed at images generated there."""
    subprocess.run([sys.executable, "-c", "import sys; from golabels_cli.synthetic import make_two_domains; "
                    "make_two_domains(sys.argv[1], per_class=4, size=32, seed=1)", str(tmp_path / "data")], check=True)
    source, target = tmp_path / "data" / "source", tmp_path / "data" / "target"
    moved = str(tmp_path / "data")
    runs = Path(shutil.copytree(FIXTURE, tmp_path / "runs"))
    for config in runs.glob("*/config.yaml"):
        config.write_text(config.read_text().replace(WRITTEN_AT, moved))
    checkpoint_path = runs / "interrupted" / "checkpoint.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    for key in ("source", "target"):
        checkpoint["config"][key] = checkpoint["config"][key].replace(WRITTEN_AT, moved)
    torch.save(checkpoint, checkpoint_path)
    return runs, source, target


def test_an_interrupted_run_from_before_the_training_package_resumes_to_the_uninterrupted_weights(old_runs):
    runs, _, _ = old_runs
    result = cli("adapt", "--resume", runs / "interrupted", "--device", "cpu", "--workers", "0", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["iters"] == 4 and summary["resumed_at"] == 2
    assert summary["selected"]["by"] == "entropy"
    resumed, uninterrupted = load_file(runs / "interrupted" / "model.safetensors"), load_file(runs / "finished" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    # Bit-exact on the CPU that wrote the fixture; another CPU's kernels may round differently.
    assert all(torch.allclose(resumed[k], uninterrupted[k], rtol=1e-4, atol=1e-5) for k in resumed)
    rows = [json.loads(line) for line in (runs / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]


def test_a_finished_run_from_before_the_training_package_evaluates_and_exports(old_runs):
    runs, _, target = old_runs
    evaluated = cli("eval", runs / "finished", target, "--device", "cpu", "--workers", "0", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["images"] == 12
    exported = cli("export", runs / "finished", "--onnx", "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["max_abs_diff"] <= 1e-4
    predicted = cli("predict", runs / "finished" / "model.onnx", target)
    assert predicted.exit_code == 0, predicted.stderr
    assert len(predicted.stdout.splitlines()) == 1 + 12
