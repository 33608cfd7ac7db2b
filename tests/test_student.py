"""--search-pick student: the candidates' ensemble teaches one new head (training/teacher.py), which
ships alone; --teacher for one run; the agreement pick. Resumable like any run of the search."""

import json

import pytest
import torch

from conftest import TINY, adapt_tiny, cli
from golabels_cli.progress import CandidateStarted
from golabels_cli.training.teacher import nearest, refine
from test_search import FROZEN, RECIPES, interrupt_in, same_weights, search_config


def student_search(domains, out, *extra):
    source, target = domains
    return adapt_tiny(source, target, out, *FROZEN, "--method", "auto", "--search-recipes", RECIPES, "--search-pick", "student",
                      "--eval-dir", target, *extra)


@pytest.fixture(scope="module")
def taught(domains, tmp_path_factory):
    return student_search(domains, tmp_path_factory.mktemp("student") / "run")


def test_each_refined_label_is_the_teachers_prediction_of_the_images_nearest_neighbours():
    torch.manual_seed(0)
    probabilities = torch.randn(12, 3).softmax(1)
    features = (torch.randn(12, 4), torch.randn(12, 5))
    refined = refine(probabilities, features, k=3)
    for i in (0, 7):
        by_member = []
        for z in features:  # by hand: the 3 other rows of highest cosine similarity
            cosine = [(float(torch.nn.functional.cosine_similarity(z[i], z[j], dim=0)), j) for j in range(12) if j != i]
            near = [j for _, j in sorted(cosine, reverse=True)[:3]]
            by_member.append(probabilities[near].mean(0))
        assert torch.allclose(refined[i], torch.stack(by_member).mean(0), atol=1e-6)
    assert torch.allclose(refined.sum(1), torch.ones(12))
    one = torch.tensor([[0.2, 0.8]])
    assert torch.equal(refine(one, (torch.randn(1, 4),)), one)  # no neighbour: the teacher's own


def test_the_neighbours_are_the_same_in_blocks(monkeypatch):
    from golabels_cli.training import teacher

    features = torch.randn(50, 6)
    whole = nearest(features, 4)
    monkeypatch.setattr(teacher, "BLOCK", 7)
    assert torch.equal(nearest(features, 4), whole)


def test_the_student_ships_one_head_and_its_teacher_is_the_ensemble(taught, domains):
    from golabels_cli.checkpoint import load_model
    from golabels_cli.models import Classifier, HeadEnsemble

    summary = json.loads((taught / "summary.json").read_text())
    search = summary["search"]
    assert search["shipped"] == "student" and search["members"] == ["cdan-e+bnm", "mcc"]
    assert (taught / "model.safetensors").read_bytes() == (taught / "student" / "model.safetensors").read_bytes()
    model, info = load_model(taught)
    assert isinstance(model, Classifier) and info.members is None and info.method == "mcc"
    teacher, teacher_info = load_model(taught / "teacher.safetensors")
    assert isinstance(teacher, HeadEnsemble) and teacher_info.members == ["cdan-e+bnm", "mcc"]
    student_config = (taught / "student" / "config.yaml").read_text()
    assert f"teacher: {taught / 'teacher.safetensors'}" in student_config and "method: mcc" in student_config
    assert set(search["teacher"]["validators"]) == {"src_acc", "entropy", "im", "snd", "dev"}
    assert search["teacher"]["target_acc"] is not None and search["student"]["target_acc"] == summary["target_acc"]
    rows = [json.loads(line) for line in (taught / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_teacher"] is not None and r["loss_teacher"] > 0 for r in rows)
    result = cli("eval", taught, domains[1], "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["accuracy"] == pytest.approx(summary["target_acc"])


def test_the_exported_student_is_one_head(taught, tmp_path):
    import onnx

    result = cli("export", taught, "--onnx", "--output", tmp_path / "student.onnx")
    assert result.exit_code == 0, result.stderr
    graph = onnx.load(str(tmp_path / "student.onnx")).graph
    heads = [n for n in graph.node if n.op_type == "Gemm" or n.op_type == "MatMul"]
    assert len(heads) == 2  # the bottleneck's Linear and the head's: one member's, not an ensemble's
    assert "members" not in {p.key for p in onnx.load(str(tmp_path / "student.onnx")).metadata_props}


def test_adapt_and_report_show_the_teacher_and_the_student(taught, domains, tmp_path):
    result = cli("report", taught)
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "teacher: the ensemble of 2" in out and "student" in out and "its teacher" in out
    source, target = domains
    shown = cli("adapt", source, target, *TINY, *FROZEN, "--method", "auto", "--search-recipes", RECIPES, "--search-pick", "student",
                "--out", tmp_path / "again")
    assert shown.exit_code == 0, shown.stderr
    assert "teacher: the ensemble of 2" in " ".join(shown.stdout.split())
    assert "candidate 4 of 4, student (mcc, taught by cdan-e+bnm, mcc)" in shown.stderr
    assert "candidate 1 of 4, cdan-e+bnm" in shown.stderr


def test_an_interrupted_student_resumes_to_the_uninterrupted_weights(taught, domains, tmp_path):
    from golabels_cli import training
    from golabels_cli.errors import Interrupted

    with pytest.raises(Interrupted) as stopped:
        training.adapt(search_config(domains, "student"), out=tmp_path / "cut", progress=interrupt_in("student", 5))
    assert "(the student)" in str(stopped.value) and f"golabels adapt --resume {tmp_path / 'cut'}" in str(stopped.value)
    assert (tmp_path / "cut" / "student" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = []
    training.resume(tmp_path / "cut", progress=lambda e: resumed.append(e.recipe) if isinstance(e, CandidateStarted) else None)
    assert [r.split(" ")[0] for r in resumed] == ["student"]  # the candidates are read, not trained again
    assert same_weights(taught / "model.safetensors", tmp_path / "cut" / "model.safetensors")
    assert same_weights(taught / "teacher.safetensors", tmp_path / "cut" / "teacher.safetensors")


def test_a_run_taught_by_another_run_and_the_teachers_checks(domains, tmp_path, taught):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "taught", "--freeze-backbone", "--iters", "6", "--method", "mcc", "--teacher", taught,
                     "--eval-dir", target)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"]["model"] == str(taught) and summary["teacher"]["members"] == ["mcc"]
    assert summary["teacher"]["target_acc"] is not None
    refused = cli("adapt", source, target, *TINY, "--method", "source-only", "--teacher", taught, "--out", tmp_path / "no")
    assert refused.exit_code == 2 and "--teacher" in refused.stderr and not (tmp_path / "no").exists()
    missing = cli("adapt", source, target, *TINY, "--method", "mcc", "--teacher", tmp_path / "nowhere", "--out", tmp_path / "no")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr and not (tmp_path / "no").exists()
    search = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "auto", "--teacher", taught, "--out", tmp_path / "no")
    assert search.exit_code == 2 and "--search-pick student" in search.stderr


def test_the_agreement_pick_ships_the_candidate_closest_to_the_ensemble(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", *FROZEN, "--method", "auto", "--search-recipes", "cdan-e+bnm,mcc,bnm,source-only",
                     "--search-pick", "agreement")
    search = json.loads((run / "summary.json").read_text())["search"]
    agreement = {c["recipe"]: c["agreement"] for c in search["candidates"]}
    adapted = {r: a for r, a in agreement.items() if r != "source-only"}
    assert search["shipped"] == max(adapted, key=adapted.get) and "agrees most" in search["why"]
    assert all(0 <= a <= 1 for a in agreement.values())
    assert (run / "model.safetensors").read_bytes() == (run / "candidates" / search["shipped"] / "model.safetensors").read_bytes()


def test_a_student_search_replays_byte_for_byte_and_prints_its_stage(taught, domains, tmp_path):
    result = cli("adapt", "--config", taught / "config.yaml", "--out", tmp_path / "again", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (taught / "model.safetensors").read_bytes()
    source, target = domains
    printed = cli("adapt", source, target, *TINY, "--freeze-backbone", "--search-pick", "student", "--print-config")
    assert printed.exit_code == 0, printed.stderr
    assert "#     then student: a run of mcc in RUN/student, taught by the adapted candidates' ensemble" in printed.stdout
    assert "search-pick: student" in printed.stdout


def test_the_student_predicts_from_its_onnx_file_as_from_its_weights(taught, domains, tmp_path):
    from conftest import csv_rows, image_paths

    assert cli("export", taught, "--onnx", "--output", tmp_path / "m.onnx").exit_code == 0
    by_onnx = cli("predict", tmp_path / "m.onnx", domains[1])
    by_torch = cli("predict", taught, domains[1])
    assert by_onnx.exit_code == 0 and by_torch.exit_code == 0, by_onnx.stderr + by_torch.stderr
    assert [r["label"] for r in csv_rows(by_onnx.stdout)] == [r["label"] for r in csv_rows(by_torch.stdout)]
    assert len(csv_rows(by_onnx.stdout)) == len(image_paths(domains[1]))


def test_a_neighbourhood_recipe_is_a_candidate_like_any_other(domains, tmp_path):
    run = adapt_tiny(*domains, tmp_path / "run", *FROZEN, "--method", "auto", "--search-recipes", "mcc+aad,mcc,source-only")
    search = json.loads((run / "summary.json").read_text())["search"]
    assert search["members"] == ["mcc+aad", "mcc"] and (run / "candidates" / "mcc+aad" / "model.safetensors").is_file()
