"""The neighbourhood loss (aad) and its memory of the target set: the formula against a hand
computation, the bank's rows and neighbours, and runs of aad recipes on both training paths
(cached features and images), resumed to the uninterrupted weights."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY, cli, interrupt_at
from golabels_cli.methods import Objective, StepOutput, TargetBank
from golabels_cli.methods.aad import attract_disperse


def _aad_by_hand(logits, features, index, bank_features, bank_scores, k, dispersion):
    """The loss one element at a time: the bank first takes the batch's rows, then each row's k
    nearest other rows by cosine give the attraction, the batch's other rows the dispersion."""
    batch = len(logits)
    p = F.softmax(logits, dim=1).tolist()
    bank_f, bank_s = bank_features.clone(), bank_scores.clone()
    for row, i in enumerate(index.tolist()):
        bank_f[i], bank_s[i] = F.normalize(features[row], dim=0), torch.tensor(p[row])
    attraction = dispersed = 0.0
    for row, i in enumerate(index.tolist()):
        z = F.normalize(features[row], dim=0)
        similar = sorted(((float(z @ bank_f[j]), j) for j in range(len(bank_f)) if j != i), reverse=True)[:k]
        attraction += sum(sum(a * float(b) for a, b in zip(p[row], bank_s[j])) for _, j in similar) / k
        dispersed += sum(sum(a * b for a, b in zip(p[row], p[m])) for m in range(batch) if m != row) / (batch - 1)
    return -attraction / batch + dispersion * dispersed / batch


def test_aad_is_the_papers_formula_with_means():
    torch.manual_seed(0)
    bank = TargetBank(7, 3, 4)
    bank.fill(torch.randn(7, 3), torch.randn(7, 4) * 2)
    before_f, before_s = bank.features.clone(), bank.scores.clone()
    logits, features, index = torch.randn(3, 4) * 2, torch.randn(3, 3), torch.tensor([0, 4, 5])
    expected = _aad_by_hand(logits, features, index, before_f, before_s, 2, 0.7)
    assert float(attract_disperse(logits, features, index, bank, 2, 0.7)) == pytest.approx(expected, rel=1e-5)
    # the batch's rows now hold its features (normalized) and predictions; the others are as they were
    assert torch.allclose(bank.features[index], F.normalize(features, dim=1)) and torch.allclose(bank.scores[index], logits.softmax(1))
    kept = [1, 2, 3, 6]
    assert torch.equal(bank.features[kept], before_f[kept]) and torch.equal(bank.scores[kept], before_s[kept])


def test_a_row_is_never_its_own_neighbour():
    bank = TargetBank(4, 2, 2)
    bank.fill(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), torch.zeros(4, 2))
    near = bank.neighbours(bank.features[[0, 2]], torch.tensor([0, 2]), 1)
    assert near.tolist() == [[1], [3]]


def test_aad_pulls_a_prediction_toward_its_neighbours_and_pushes_a_batch_apart():
    bank = TargetBank(3, 2, 2)
    bank.fill(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [5.0, -5.0], [0.0, 0.0]]))
    logits = torch.zeros(1, 2, requires_grad=True)
    attract_disperse(logits, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), bank, 1, 0.0).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # toward class 0, its neighbour's
    together = torch.tensor([[3.0, 0.0], [3.0, 0.0]], requires_grad=True)
    attract_disperse(together, torch.eye(2), torch.tensor([0, 2]), TargetBank(3, 2, 2), 1, 1.0).backward()
    assert (together.grad[:, 0] > 0).all()  # dispersion: both rows away from the class they share


def test_objective_of_a_neighbourhood_recipe_needs_the_target_size():
    from golabels_cli.errors import InputError

    with pytest.raises(InputError, match="target_size"):
        Objective.of("cdan-e+aad", num_classes=3, feature_dim=8)
    objective = Objective.of("aad", num_classes=3, feature_dim=8, target_size=10, aad_neighbours=2)
    assert objective.bank.features.shape == (10, 8) and objective.options["aad_neighbours"] == 2
    objective.bank.fill(torch.randn(10, 8), torch.randn(10, 3))
    logits = torch.randn(8, 3, requires_grad=True)
    out = StepOutput(torch.randn(8, 8), logits, torch.zeros(4, dtype=torch.long), target_index=torch.tensor([0, 1, 2, 3]))
    loss, logged, _ = objective(out, 0.0)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[4:].abs().sum() > 0 and logged["loss_target"] != 0


@pytest.mark.parametrize("path", [["--freeze-backbone"], ["--augment", "batched"], ["--augment", "per-image"]])
def test_an_aad_recipe_resumes_to_the_uninterrupted_weights(domains, tmp_path, path):
    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted

    source, target = domains
    values = {"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
              "device": "cpu", "workers": 0, "batch_size": 4, "iters": 6, "method": "cdan-e+aad", "aad_neighbours": 3,
              "freeze_backbone": path == ["--freeze-backbone"], **({"augment": path[1]} if path[0] == "--augment" else {})}
    training.adapt(build_config(values), out=tmp_path / "whole")
    with pytest.raises(Interrupted):
        training.adapt(build_config(values), out=tmp_path / "stopped", progress=interrupt_at(3))
    assert "target_bank" in torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    training.resume(tmp_path / "stopped")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "stopped" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cdan_e_with_aad_adapts_evaluates_exports_and_predicts_and_its_options_are_checked(domains, tmp_path):
    import json

    from conftest import csv_rows

    source, target = domains
    result = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "cdan-e+aad", "--iters", "4", "--out",
                 tmp_path / "run", "--eval-dir", target, "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["method"] == "cdan-e+aad" and summary["final"]["loss_target"] is not None
    evaluated = cli("eval", tmp_path / "run", target, "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["accuracy"] == summary["target_acc"]
    assert cli("export", tmp_path / "run", "--onnx").exit_code == 0
    predicted = cli("predict", tmp_path / "run" / "model.onnx", target)
    assert predicted.exit_code == 0 and len(csv_rows(predicted.stdout)) == summary["images"]["target"]
    alone = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "aad", "--iters", "4", "--out", tmp_path / "alone",
                "--quiet")
    assert alone.exit_code == 0, alone.stderr
    bad = cli("adapt", source, target, *TINY, "--method", "aad", "--aad-neighbours", "0", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--aad-neighbours" in bad.stderr and not (tmp_path / "bad").exists()
