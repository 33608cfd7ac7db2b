"""What resume reads is checked before it changes anything: every field of checkpoint.pt's inner
state, and every run file as a regular file of the run's own (issue 44, items 1 and 3). Each in a
real process: exit 2, one error line, the folder byte for byte as it was."""

import os
from pathlib import Path

import pytest
import torch

from conftest import cli, cli_subprocess, one_error_line, tree


@pytest.fixture(scope="module")
def stopped_run(domains, tmp_path_factory):
    """A run stopped after iteration 4 of 8, with a checkpoint, a selected snapshot and evaluations."""
    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted
    from golabels_cli.progress import StepDone

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 8, "eval_every": 2, "select": "im"})

    def interrupt(event):
        if isinstance(event, StepDone) and event.iter == 4:
            os.kill(os.getpid(), __import__("signal").SIGINT)

    run = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(Interrupted):
        training.adapt(cfg, out=run, progress=interrupt)
    return run


@pytest.fixture
def interrupted(stopped_run, tmp_path):
    """A copy of the stopped run of this test's own."""
    import shutil

    return Path(shutil.copytree(stopped_run, tmp_path / "run"))


def edit(run, change):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.parametrize("change, words", [
    (lambda c: c["rng"].__setitem__("torch", torch.zeros(3, dtype=torch.uint8)), "its rng is not a set of generator states"),
    (lambda c: c["rng"].__setitem__("python", (3, (1, 2), None)), "its rng is not a set of generator states"),
    (lambda c: c["rng"]["numpy"].__setitem__("keys", torch.zeros(3, dtype=torch.int64)), "its rng is not a set of generator states"),
    (lambda c: c["loop"].__setitem__("evals", "zzz"), "its loop state's evals must be a list of evaluations"),
    (lambda c: c["loop"].__setitem__("sums", {"loss_cls": "x"}), "its loop state's sums must be a mapping of names to numbers"),
    (lambda c: c["loop"].__setitem__("seconds", -1.0), "its loop state's seconds must be a non-negative number"),
    (lambda c: c["loop"].__setitem__("extra", 1), "its loop state holds an unknown field 'extra'"),
    (lambda c: c.__setitem__("selected_model", {"head.weight": torch.zeros(2)}), "its selected_model does not fit the run's model"),
    (lambda c: c.__setitem__("model", {"head.weight": "x"}), "its model must map names to tensors"),
    (lambda c: c["optimizer"]["state"].__setitem__(0, [1, 2]), "its optimizer state must map each parameter to its buffers"),
    (lambda c: c["optimizer"]["state"][0].__setitem__("momentum_buffer", torch.zeros(1)),
     "its optimizer buffer 'momentum_buffer' is of shape (1,), for a parameter of shape"),
], ids=["torch-rng", "python-rng", "numpy-rng", "evals", "sums", "seconds", "unknown", "selected", "model", "optimizer-type",
        "momentum-shape"])
def test_a_checkpoint_with_a_wrong_inner_state_is_refused_before_anything_changes(interrupted, change, words):
    edit(interrupted, change)
    before = tree(interrupted)
    # A refusal, in-process: test_resume_refuses_a_length_below_the_iteration_reached runs one in a real process.
    result = cli("adapt", "--resume", interrupted)
    assert result.exit_code == 2, result.stderr
    one_error_line(result, "checkpoint.pt is damaged", words)
    assert tree(interrupted) == before


def test_the_interrupted_run_itself_still_resumes(interrupted):
    result = cli("adapt", "--resume", interrupted, "--quiet")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml", "results.csv"])
def test_a_fifo_in_place_of_a_run_file_is_refused_not_waited_on(interrupted, name):
    (interrupted / name).unlink(missing_ok=True)
    os.mkfifo(interrupted / name)
    before = tree(interrupted)
    result = cli_subprocess("adapt", "--resume", interrupted, timeout=60)  # it waited for a reader for ever
    assert result.returncode == 2, result.stderr
    one_error_line(result, name)
    assert tree(interrupted) == before


def test_a_link_in_place_of_a_run_file_is_refused(interrupted, tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("the user's own file\n")
    (interrupted / "metrics.jsonl").unlink()
    (interrupted / "metrics.jsonl").symlink_to(outside)
    result = cli("adapt", "--resume", interrupted)
    assert result.exit_code == 2
    one_error_line(result, "metrics.jsonl is a link")
    assert outside.read_text() == "the user's own file\n"  # never appended to


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl"])
def test_report_refuses_a_fifo_in_place_of_a_run_file(interrupted, name):
    (interrupted / name).unlink(missing_ok=True)
    os.mkfifo(interrupted / name)
    result = cli_subprocess("report", interrupted, "--no-plots", timeout=60)  # a read would wait for a writer for ever
    assert result.returncode == 2
    one_error_line(result, f"{name} is a FIFO")


def test_resume_may_shorten_or_lengthen_a_run_and_its_schedule_follows(interrupted):
    import json

    import yaml

    result = cli_subprocess("adapt", "--resume", interrupted, "--iters", "6", "--json")
    assert result.returncode == 0, result.stderr
    assert "resuming at iteration 4 with --iters 6 (was 8): the schedule follows the new length" in result.stderr
    config = yaml.safe_load((interrupted / "config.yaml").read_text())
    assert config["iters"] == 6 and config["lr-gamma"] == pytest.approx(20 / 6)  # the lr decays over the new length
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["iters"] == 6 and summary["resumed_at"] == 4
    again = cli("adapt", "--resume", interrupted, "--iters", "9")  # a finished run is never overwritten
    assert again.exit_code == 2
    one_error_line(again, "is complete (6 iterations)", "continue it in a new folder: golabels adapt --resume")


def test_resume_refuses_a_length_below_the_iteration_reached(interrupted):
    before = tree(interrupted)
    result = cli_subprocess("adapt", "--resume", interrupted, "--iters", "3")  # one refusal of a resume as a user's shell runs it
    assert result.returncode == 2
    one_error_line(result, "--iters 3 is below the iteration the run reached (4 of 8)", "pass --iters 4 or more")
    assert tree(interrupted) == before


def test_a_run_stopped_after_its_length_changed_resumes(interrupted):
    from golabels_cli import api
    from golabels_cli.errors import Interrupted
    from golabels_cli.progress import StepDone

    def interrupt(event):
        if isinstance(event, StepDone) and event.iter == 6:
            os.kill(os.getpid(), __import__("signal").SIGINT)

    with pytest.raises(Interrupted):
        api.resume(interrupted, iters=10, progress=interrupt)
    finished = api.resume(interrupted)
    assert finished.summary["iters"] == 10 and finished.summary["resumed_at"] == 6


def test_a_run_stopped_between_its_new_length_and_its_next_save_keeps_the_new_length(interrupted, monkeypatch):
    """Issue 54 item 12: `--resume --iters 10` writes config.yaml, then is killed before the next
    save: the checkpoint still says 8. The next resume trained to 8 ("(was 8)"); config.yaml is
    the newer of the two and says what the user asked for."""
    from golabels_cli.training import run as run_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill would leave it: config.yaml rewritten, nothing saved since

    monkeypatch.setattr(run_module, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_module.resume(interrupted, {"iters": 10})
    assert torch.load(interrupted / "checkpoint.pt", weights_only=True)["config"]["iters"] == 8
    monkeypatch.undo()
    result = cli("adapt", "--resume", interrupted, "--json")
    assert result.exit_code == 0, result.stderr
    assert "resuming at iteration 4 with --iters 10 (was 8)" in result.stderr
    import json

    assert json.loads((interrupted / "summary.json").read_text())["iters"] == 10


def test_a_finished_run_is_continued_in_a_new_folder(interrupted, tmp_path):
    """Issue 55 item 8: `--resume RUN --iters N` on a finished run was refused with no way to go on
    (timm's --resume takes new --epochs). With --out it continues in a new folder, RUN untouched."""
    import json

    assert cli("adapt", "--resume", interrupted, "--quiet").exit_code == 0  # finished: 8 of 8
    before = tree(interrupted)
    refused = cli("adapt", "--resume", interrupted, "--iters", "10")
    assert refused.exit_code == 2
    one_error_line(refused, "is complete (8 iterations)", f"golabels adapt --resume {interrupted} --iters 10 --out NEW")
    longer = tmp_path / "longer"
    result = cli_subprocess("adapt", "--resume", interrupted, "--iters", "10", "--out", longer, "--json")
    assert result.returncode == 0, result.stderr
    assert f"continuing {interrupted} (iteration 8 of 8) in {longer}" in result.stderr
    assert "resuming at iteration 8 with --iters 10 (was 8): the schedule follows the new length" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["iters"] == 10 and summary["resumed_at"] == 8 and summary["run_dir"] == str(longer)
    assert (longer / "model.safetensors").is_file() and tree(interrupted) == before
    taken = cli("adapt", "--resume", interrupted, "--iters", "12", "--out", longer)  # never into a used folder
    assert taken.exit_code == 2 and "already exists" in taken.stderr and tree(longer) != {}
