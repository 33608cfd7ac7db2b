"""--method auto: every candidate a run of its own, the target's data choosing what ships,
resumable and replayable like a single run (issue 42)."""

import json
from pathlib import Path
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, cli_subprocess, tree
from golabels_cli.progress import CandidateStarted, StepDone
from test_inputs import assert_one_line_error

FROZEN = ["--freeze-backbone", "--iters", "12", "--save-every", "4", "--eval-every", "6"]
RECIPES = "cdan-e+bnm,mcc,source-only"


def search(domains, out, *extra):
    """A tiny search shipping the ensemble unless `extra` names another --search-pick (the student, the
    default, is test_student.py's)."""
    source, target = domains
    pick = [] if "--search-pick" in extra else ["--search-pick", "ensemble"]
    return adapt_tiny(source, target, out, *FROZEN, "--method", "auto", "--search-recipes", RECIPES, "--eval-dir", target, *pick, *extra)


@pytest.fixture(scope="module")
def searched(domains, tmp_path_factory):
    return search(domains, tmp_path_factory.mktemp("search") / "run")


def same_weights(a, b) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_every_candidate_is_the_run_its_recipe_makes_alone(searched, domains, tmp_path):
    source, target = domains
    for recipe in RECIPES.split(","):
        assert (searched / "candidates" / recipe / "summary.json").is_file()
    alone = adapt_tiny(source, target, tmp_path / "mcc", *FROZEN, "--method", "mcc", "--eval-dir", target)
    assert same_weights(alone / "model.safetensors", searched / "candidates" / "mcc" / "model.safetensors")


def test_the_ensemble_averages_the_adapted_heads_and_says_so(searched, domains):
    from golabels_cli.checkpoint import load_model

    summary = json.loads((searched / "summary.json").read_text())
    search = summary["search"]
    assert summary["method"] == "auto" and search["pick"] == "ensemble" and search["shipped"] == "ensemble"
    assert search["members"] == ["cdan-e+bnm", "mcc"]  # source-only is the floor, never a member
    assert [c["recipe"] for c in search["candidates"]] == RECIPES.split(",")
    for c in search["candidates"]:
        assert set(c["validators"]) == {"src_acc", "entropy", "im", "snd", "dev"} and c["target_acc"] is not None
    assert search["source_only_acc"] == search["candidates"][2]["target_acc"]
    model, info = load_model(searched)
    assert info.members == ["cdan-e+bnm", "mcc"] and info.method == "auto"
    members = [load_model(searched / "candidates" / r)[0] for r in info.members]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        mean = torch.stack([m(x)[0].softmax(1) for m in members]).mean(0)
        assert torch.allclose(model(x)[0].softmax(1), mean, atol=1e-6)
    # summary's accuracy is the shipped ensemble's, as eval reads it
    result = cli("eval", searched, domains[1], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["target_acc"])


def test_a_validator_pick_ships_that_candidates_own_file(domains, tmp_path):
    run = search(domains, tmp_path / "run", "--search-pick", "im")
    search_ = json.loads((run / "summary.json").read_text())["search"]
    values = {c["recipe"]: c["validators"]["im"] for c in search_["candidates"]}
    assert search_["shipped"] == max(values, key=values.get) and search_["members"] == [search_["shipped"]]
    assert "best im" in search_["why"]
    shipped = run / "candidates" / search_["shipped"] / "model.safetensors"
    assert (run / "model.safetensors").read_bytes() == shipped.read_bytes()


def search_config(domains, pick: str):
    """search()'s options as a config, for training.adapt in this process."""
    from golabels_cli.config import build_config

    source, target = domains
    return build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                         "device": "cpu", "workers": 0, "batch_size": 4, "iters": 12, "save_every": 4, "eval_every": 6,
                         "freeze_backbone": True, "method": "auto", "search_recipes": RECIPES, "search_pick": pick,
                         "eval_dir": str(target)})


def interrupt_in(stage: str, iteration: int):
    """A progress listener sending this process SIGINT at `iteration` of the stage (a candidate's recipe,
    or "student") whose CandidateStarted named it first."""
    started = []

    def interrupt(event):
        if isinstance(event, CandidateStarted):
            started.append(event.recipe.split(" ")[0])
        if isinstance(event, StepDone) and event.iter == iteration and started[-1] == stage:
            os.kill(os.getpid(), signal.SIGINT)

    return interrupt


def test_an_interrupted_search_resumes_where_it_stopped(searched, domains, tmp_path):
    from golabels_cli import training
    from golabels_cli.errors import Interrupted

    with pytest.raises(Interrupted) as stopped:
        training.adapt(search_config(domains, "ensemble"), out=tmp_path / "cut", progress=interrupt_in("mcc", 5))
    assert f"golabels adapt --resume {tmp_path / 'cut'}" in str(stopped.value) and "candidate mcc, 2 of 3" in str(stopped.value)
    first = tmp_path / "cut" / "candidates" / "cdan-e+bnm"
    finished = tree(first)
    assert (tmp_path / "cut" / "candidates" / "mcc" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "candidates" / "source-only").exists()

    resumed = []
    summary = training.resume(tmp_path / "cut", progress=lambda e: resumed.append(e.recipe) if isinstance(e, CandidateStarted) else None)
    assert resumed == ["mcc", "source-only"]  # the finished candidate is read, not trained again
    assert tree(first) == finished
    assert summary["search"]["shipped"] == "ensemble"
    assert same_weights(searched / "model.safetensors", tmp_path / "cut" / "model.safetensors")
    for recipe in RECIPES.split(","):
        assert same_weights(searched / "candidates" / recipe / "model.safetensors",
                            tmp_path / "cut" / "candidates" / recipe / "model.safetensors")
    result = cli("adapt", "--resume", tmp_path / "cut")
    assert_one_line_error(result, "already complete")


def test_a_search_replays_from_its_config_byte_for_byte(searched, tmp_path):
    result = cli("adapt", "--config", searched / "config.yaml", "--out", tmp_path / "again", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (searched / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "config.yaml").read_text() == (searched / "config.yaml").read_text()


def test_print_config_shows_the_candidates_and_what_each_resolves(domains):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "auto", "--print-config")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "method: auto" in text and "search-recipes: cdan-e+bnm,cdan-e+mcc,mcc,bnm,source-only" in text
    assert "search-pick: student" in text and "#     then student: a run of mcc in RUN/student" in text
    assert "#     mcc: no discriminator, lr-gamma 0.001, bn-stats target" in text
    assert "#     cdan-e+bnm: discriminator batchnorm" in text


def test_adapt_and_report_show_every_candidate_and_the_pick(searched):
    result = cli("report", searched, "--no-plots")  # the shared search stays as it is (the figure's test copies it)
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "the mean of 2 adapted candidates' probabilities (cdan-e+bnm, mcc)" in out
    for recipe in RECIPES.split(","):
        assert recipe in out
    assert "in the ensemble" in out
    result = cli("report", searched, "--json", "--no-plots")
    data = json.loads(result.stdout)
    assert data["finished"] and [c["recipe"] for c in data["candidates"]] == RECIPES.split(",")
    assert data["summary"]["search"]["shipped"] == "ensemble"


def unfinished(searched, cut):
    """A copy of the search as if it had stopped before its last candidate started."""
    import shutil

    shutil.copytree(searched, cut)
    for name in ("summary.json", "model.safetensors"):
        (cut / name).unlink()
    shutil.rmtree(cut / "candidates" / "source-only")
    return cut


def test_report_of_an_unfinished_search_says_where_it_is(searched, tmp_path):
    cut = unfinished(searched, tmp_path / "cut")
    result = cli("report", cut)
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "not finished: 2 of 3 candidates done" in out and "not started" in out


def test_the_ensemble_exports_verifies_and_predicts_as_one_model(searched, domains, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(searched, run)
    result = cli("export", run, "--onnx", "--json")
    assert result.exit_code == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["max_abs_diff"] < 1e-4 and exported["verified_on"]
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert json.loads(meta["members"]) == ["cdan-e+bnm", "mcc"] and meta["method"] == "auto"
    torch_rows = cli("predict", run, domains[1], "--format", "jsonl")
    onnx_rows = cli("predict", run / "model.onnx", domains[1], "--format", "jsonl")
    assert torch_rows.exit_code == 0 and onnx_rows.exit_code == 0, torch_rows.stderr + onnx_rows.stderr
    labels = [[json.loads(line)["label"] for line in r.stdout.splitlines()] for r in (torch_rows, onnx_rows)]
    assert labels[0] == labels[1] and len(labels[0]) == 24


@pytest.mark.parametrize("args, message", [
    (["--method", "auto"], "--method auto trains every candidate recipe on the frozen backbone's cached features"),
    (["--freeze-backbone", "--method", "mcc", "--search-pick", "im"], "--search-pick applies to --method auto"),
    (["--search-recipes", "mcc,bnm"], "--search-recipes applies to --method auto, and this run's --method is cdan-e"),
    (["--freeze-backbone", "--method", "auto", "--search-recipes", "mcc,mcc"], "names 'mcc' twice"),
    (["--freeze-backbone", "--method", "auto", "--search-recipes", "mcc"], "needs two recipes at least"),
    (["--freeze-backbone", "--method", "auto", "--search-recipes", "mcc,bogus"], "unknown recipe in --search-recipes 'bogus'"),
    (["--freeze-backbone", "--method", "auto", "--search-recipes", "mcc,auto"], "auto is the search itself"),
    (["--freeze-backbone", "--method", "auto", "--search-pick", "target-acc"], "unknown search-pick 'target-acc'"),
    (["--freeze-backbone", "--method", "auto", "--devices", "2"], "one after another in one process"),
])
def test_bad_search_options_are_one_line_errors_and_create_nothing(domains, tmp_path, args, message):
    source, target = domains
    before = tree(tmp_path)
    result = cli("adapt", source, target, *TINY, *args, "--out", tmp_path / "run")
    assert_one_line_error(result, message)
    assert tree(tmp_path) == before


def test_a_search_folder_holding_foreign_files_is_not_emptied(searched, tmp_path):
    cut = unfinished(searched, tmp_path / "cut")
    (cut / "candidates" / "source-only").mkdir()
    (cut / "candidates" / "source-only" / "notes.txt").write_text("mine")
    before = tree(cut)
    result = cli_subprocess("adapt", "--resume", cut)
    assert result.returncode == 2 and "notes.txt" in result.stderr and "Traceback" not in result.stderr
    assert tree(cut) == before


def test_a_damaged_members_list_is_refused_naming_the_field(searched, tmp_path):
    from golabels_cli.checkpoint import load_model
    from golabels_cli.errors import InputError
    from golabels_cli.model_info import ModelInfo

    _, info = load_model(searched)
    meta = info.metadata()
    meta["members"] = json.dumps(["mcc"])
    with pytest.raises(InputError, match="bad members"):
        ModelInfo.from_metadata(meta, tmp_path / "model.safetensors")


def test_a_search_speaks_once(domains, tmp_path):
    """Issue 55 item 3: each candidate repeated the warnings, the cache lines, the run directory,
    the legend and its validator lines (85 lines for this search, up to 296 columns). What is
    common is said once; each candidate has its start line, its progress and one result line;
    every line fits 100 columns."""
    source, target = domains
    result = cli_subprocess("adapt", source, target, *TINY, *FROZEN, "--out", tmp_path / "run")  # the default search, piped
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    shown = [line.replace(str(tmp_path), "/tmp/x") for line in lines]  # a user's paths are theirs; pytest's are long
    assert max(map(len, shown)) <= 100, [line for line in shown if len(line) > 100]
    recipes = ["cdan-e+bnm", "cdan-e+mcc", "mcc", "bnm", "source-only", "student"]
    assert sum(line.startswith("--method auto: candidate ") for line in lines) == len(recipes)
    assert [line.split()[0] for line in lines if line.startswith("  ")] == recipes  # one result line each, in order
    for once in ("warning: --freeze-backbone on a random backbone", "adapting on cpu"):
        assert sum(line.startswith(once) for line in lines) == 1, (once, result.stderr)
    reused = [line for line in lines if "reused from the cache" in line]
    assert len(reused) == len(set(reused)) <= 3, result.stderr  # source, held-out source, target: each said once
    assert not [line for line in lines if " validators: " in line]  # in the result lines and the table instead
    assert len(lines) <= 42, result.stderr


def test_a_searchs_config_says_the_image_size_print_config_says(domains, tmp_path):
    """Issue 55 item 9: --print-config said image-size: 160 where the search's config.yaml said null."""
    import yaml

    untiny = [a for i, a in enumerate(TINY) if a != "--image-size" and (i == 0 or TINY[i - 1] != "--image-size")]
    args = ["adapt", *domains, *untiny, *FROZEN, "--search-recipes", "mcc,source-only", "--search-pick", "ensemble"]
    printed = cli(*args, "--print-config")
    assert printed.exit_code == 0, printed.stderr
    assert cli(*args, "--out", tmp_path / "run", "--quiet").exit_code == 0
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["image-size"] == yaml.safe_load(printed.stdout)["image-size"] == 160


def test_report_of_a_search_draws_its_candidates_side_by_side(searched, tmp_path):
    """Issue 55 item 6: `golabels report` of a search wrote no figure, even with matplotlib."""
    import shutil

    pytest.importorskip("matplotlib")
    run = Path(shutil.copytree(searched, tmp_path / "run"))
    result = cli("report", run)
    assert result.exit_code == 0, result.stderr
    figure = run / "report-search.png"
    assert f"plots: {figure}" in result.stderr and figure.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(cli("report", run, "--json").stdout)["plots"] == [str(figure)]
