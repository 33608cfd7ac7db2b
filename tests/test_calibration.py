"""--calibrate (issue 55 item 10): a temperature fitted on the held-out source, carried by the model
file and the ONNX graph, and the calibration error that eval measures."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import TINY, cli, image_paths
from golabels_cli.calibration import MIN_CALIBRATION_IMAGES, expected_calibration_error, fit_temperature, nll
from golabels_cli.checkpoint import load_model
from golabels_cli.errors import InputError
from golabels_cli.images import load_array
from golabels_cli.model_info import MAX_TEMPERATURE, MIN_TEMPERATURE, ModelInfo
from golabels_cli.synthetic import make_two_domains
from golabels_cli.training.search_pace import Pace


def test_the_fit_finds_the_temperature_the_labels_were_drawn_with():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 5, generator=generator)
    for true_temperature in (0.5, 2.0):
        labels = torch.multinomial((logits / true_temperature).softmax(1), 1, generator=generator).squeeze(1)
        fitted = fit_temperature(logits, labels, lowest=MIN_TEMPERATURE)
        assert fitted == pytest.approx(true_temperature, rel=0.05)
        # a minimum: either side is worse
        assert nll(logits, labels, fitted) < min(nll(logits, labels, fitted * 1.1), nll(logits, labels, fitted / 1.1))
        # what a run ships only softens: an overconfident model's 2, an underconfident one's 1
        assert fit_temperature(logits, labels) == (pytest.approx(2.0, rel=0.05) if true_temperature > 1 else 1.0)


def test_the_fit_stays_in_its_bounds_when_every_answer_is_right():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 20)
    assert fit_temperature(logits, torch.tensor([0, 1] * 20), lowest=MIN_TEMPERATURE) == pytest.approx(MIN_TEMPERATURE, rel=0.01)
    assert fit_temperature(logits, torch.tensor([0, 1] * 20)) == 1.0  # all right: nothing to soften
    assert fit_temperature(logits, torch.tensor([1, 0] * 20)) == pytest.approx(MAX_TEMPERATURE, rel=0.01)


def test_calibration_error_by_hand():
    # bin (0.8, 0.8667]: confidences 0.85, 0.85, right once -> gap |0.85 - 0.5| = 0.35, weight 2/4;
    # bin (0.9333, 1]: confidences 0.95, 0.95, right twice -> gap 0.05, weight 2/4
    confidence = torch.tensor([0.85, 0.85, 0.95, 0.95])
    correct = torch.tensor([True, False, True, True])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.5 * 0.35 + 0.5 * 0.05)
    probabilities = torch.tensor([[0.85, 0.15], [0.15, 0.85], [0.95, 0.05], [0.05, 0.95]])
    assert expected_calibration_error(probabilities, correct) == pytest.approx(0.2)
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.0


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny run with enough held-out source images to calibrate on, and its ONNX export."""
    root = tmp_path_factory.mktemp("calibrated")
    source, target = make_two_domains(root / "data", per_class=24, size=32, seed=3)
    run = root / "run"
    result = cli("adapt", source, target, *TINY, "--iters", "8", "--val-split", "0.5", "--eval-dir", target, "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert cli("export", run, "--onnx", "--quiet").exit_code == 0
    return run, target, json.loads(result.stdout)


def test_a_run_ships_the_temperature_it_fitted_on_its_held_out_source(calibrated):
    run, target, summary = calibrated
    calibration = summary["calibration"]
    assert calibration["images"] == 36 >= MIN_CALIBRATION_IMAGES
    temperature = calibration["temperature"]
    assert 1.0 < temperature <= MAX_TEMPERATURE
    # the held-out split's NLL is lower with it than without: what the fit minimizes
    assert calibration["source_val"]["ece"] != calibration["source_val"]["ece_at_temperature_1"]
    model, info = load_model(run)
    raw, raw_info = load_model(run, calibrated=False)
    assert info.temperature == raw_info.temperature == temperature
    assert model.temperature == temperature and raw.temperature == 1.0
    images = torch.from_numpy(np.stack([load_array(p, info.data_config) for p in image_paths(target)[:8]]))
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], raw(images)[0] / temperature)

    # eval measures the calibration error with the shipped temperature and without it
    report = json.loads(cli("eval", run, target, "--json", "--device", "cpu").stdout)
    assert report["calibration"] == {k: calibration["eval"][k] for k in ("temperature", "ece", "ece_at_temperature_1")}
    assert report["accuracy"] == summary["target_acc"]  # the predictions do not change
    shown = cli("eval", run, target, "--device", "cpu").stdout
    assert f"with temperature {temperature:g}" in shown and "calibration error (ECE)" in shown
    assert "logits divided by" in cli("report", run).stdout


def test_the_onnx_graph_and_its_metadata_carry_the_temperature(calibrated):
    run, target, summary = calibrated
    temperature = summary["calibration"]["temperature"]
    proto = onnx.load(str(run / "model.onnx"))
    assert float({p.key: p.value for p in proto.metadata_props}["temperature"]) == temperature
    raw, info = load_model(run, calibrated=False)
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([load_array(p, info.data_config) for p in image_paths(target)[:7]])
    _, probabilities = session.run(None, {"input": batch})
    with torch.no_grad():
        expected = (raw(torch.from_numpy(batch))[0] / temperature).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4, rtol=0)
    rows = cli("predict", run / "model.onnx", target).stdout.splitlines()[1:8]
    np.testing.assert_allclose([float(r.split(",")[2]) for r in rows], expected.max(1), atol=1e-4)


def test_calibrate_none_and_too_few_held_out_images_ship_temperature_1(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--iters", "4", "--val-split", "0.5", "--calibrate", "none", "--out", tmp_path / "a",
                 "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["calibration"] is None
    assert load_model(tmp_path / "a")[1].temperature == 1.0
    result = cli("adapt", source, target, *TINY, "--iters", "4", "--out", tmp_path / "b", "--json")  # 3 held out of 24
    assert result.exit_code == 0 and json.loads(result.stdout)["calibration"] is None
    assert "confidences not calibrated: 3 held-out source images, fewer than 30" in result.stderr
    shown = cli("eval", tmp_path / "b", target, "--device", "cpu").stdout
    assert "confidences not calibrated: temperature 1" in shown


@pytest.mark.parametrize("value", ["0", "nan", "-1", "1e9", "warm"])
def test_a_damaged_temperature_is_refused_naming_it(tmp_path, value):
    meta = ModelInfo("test_resnet", ["a", "b"], {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                                 "interpolation": "bilinear", "crop_pct": 0.875}, 8, "cdan-e", "fixed").metadata()
    with pytest.raises(InputError, match="temperature|damaged"):
        ModelInfo.from_metadata({**meta, "temperature": value}, tmp_path / "m.safetensors")


def test_a_search_eta_counts_the_time_outside_the_steps():
    pace = Pace()
    assert pace.seconds_left(("cdan-e", "mcc"), 100) is None
    pace.add(True, {"seconds": 10.0, "iters": 100}, 30.0)  # 20 s outside the steps (the first fills the cache)
    assert pace.seconds_left(("cdan-e", "mcc"), 100) == pytest.approx(10 + 20 + 2.5 + 20)
    pace.add(False, {"seconds": 2.0, "iters": 100}, 7.0)  # the least time outside the steps is the one kept
    assert pace.seconds_left(("cdan-e", "mcc"), 100) == pytest.approx(10 + 5 + 2 + 5)
    pace.add(True, {"seconds": 50.0, "iters": 100, "resumed_at": 40}, None)  # a resumed candidate's pace is not its own
    assert pace.seconds_left(("cdan-e",), 100) == pytest.approx(15)


def test_the_tables_say_what_the_temperature_did():
    from golabels_cli.tables import calibrated_row, calibration_line

    figures = {"temperature": 1.0, "ece": 0.0812, "ece_at_temperature_1": 0.0812}
    softened = {"temperature": 1.5, "images": 80, "source_val": {**figures, "temperature": 1.5, "ece": 0.03},
                "eval": {**figures, "temperature": 1.5, "ece": 0.05}}
    assert calibrated_row(softened) == ("logits divided by 1.5, fitted on 80 held-out source images (calibration error 0.081 → 0.050 "
                                        "on the --eval-dir labels)")
    unchanged = {"temperature": 1.0, "images": 80, "source_val": figures}
    assert calibrated_row(unchanged) == "temperature 1: its 80 held-out source images ask for no softening (calibration error 0.081 there)"
    assert calibration_line(softened["eval"]) == "calibration error (ECE) 0.0500 with temperature 1.5; 0.0812 without"
    assert calibration_line(figures) == "calibration error (ECE) 0.0812 (confidences not calibrated: temperature 1)"
