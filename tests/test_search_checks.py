"""A resumed search trusts nothing it did not write (issue 54 items 1, 5, 7, 8, 9, 13): its candidates
are its own folders, trained with the options its config.yaml gives them and on the folders as they
are; a refusal is one line, exit 2, and leaves every folder as it was. In real processes."""

import json
import os
import shutil

import pytest

from conftest import TINY, adapt_tiny, cli, cli_subprocess, tree
from test_inputs import assert_one_line_error
from test_search import FROZEN


@pytest.fixture(scope="module")
def stopped_search(tmp_path_factory):
    """A search on private folders, stopped after its first candidate finished (the second not started)."""
    from golabels_cli.synthetic import make_two_domains

    root = tmp_path_factory.mktemp("checks")
    source, target = make_two_domains(root / "data", per_class=6, size=32, seed=2)
    run = adapt_tiny(source, target, root / "run", *FROZEN, "--method", "auto", "--search-recipes", "mcc,source-only",
                     "--search-pick", "ensemble")
    for name in ("summary.json", "model.safetensors"):
        (run / name).unlink()
    shutil.rmtree(run / "candidates" / "source-only")
    return run, source, target


def copy_of(stopped_search, tmp_path):
    run, source, target = stopped_search
    data = tmp_path / "data"
    shutil.copytree(source, data / "source")
    shutil.copytree(target, data / "target")
    cut = shutil.copytree(run, tmp_path / "run")
    for config in [cut / "config.yaml", *cut.glob("candidates/*/config.yaml")]:
        config.write_text(config.read_text().replace(str(source), str(data / "source")).replace(str(target), str(data / "target")))
    return cut, data / "source", data / "target"


def refused(tmp_path, cut, *fragments, real_process=False):
    """`adapt --resume cut` refused with one line holding every fragment, nothing written: in-process,
    or as a user's shell runs it where a FIFO could block a read for ever (a timeout then fails the test)."""
    before = tree(tmp_path)
    if real_process:
        result = cli_subprocess("adapt", "--resume", cut, timeout=120)
        code = result.returncode
    else:
        result = cli("adapt", "--resume", cut)
        code = result.exit_code
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert tree(tmp_path) == before  # nothing trained, nothing written


def test_a_copy_of_a_stopped_search_resumes(stopped_search, tmp_path):
    cut, _, _ = copy_of(stopped_search, tmp_path)
    result = cli("adapt", "--resume", cut, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads((cut / "summary.json").read_text())["search"]["shipped"] == "mcc"  # one adapted candidate


def test_a_search_resumed_after_its_source_changed_is_refused(stopped_search, tmp_path):
    cut, source, _ = copy_of(stopped_search, tmp_path)
    first = sorted(p.name for p in source.iterdir())[0]
    os.rename(source / first, source / "zz-renamed")
    refused(tmp_path, cut, "the source folder's classes changed since candidate mcc finished", f"'{first}' is gone", "'zz-renamed' is new")
    os.rename(source / "zz-renamed", source / first)
    image = next((source / first).iterdir())
    shutil.copy(image, image.with_name("extra" + image.suffix))
    refused(tmp_path, cut, "the source folder holds", "candidate mcc trained on")


def test_a_search_whose_config_was_edited_is_refused(stopped_search, tmp_path):
    cut, _, _ = copy_of(stopped_search, tmp_path)
    config = cut / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 3"))
    refused(tmp_path, cut, "config.yaml says seed: 3 and", "candidates/mcc/config.yaml says 0: the candidate was trained with other")


def test_a_candidate_folder_that_is_a_link_or_a_damaged_summary_is_refused(stopped_search, tmp_path):
    cut, _, _ = copy_of(stopped_search, tmp_path)
    elsewhere = shutil.copytree(cut / "candidates" / "mcc", tmp_path / "another-run")
    os.symlink(elsewhere, cut / "candidates" / "source-only")
    refused(tmp_path, cut, "candidates/source-only is a link")
    os.unlink(cut / "candidates" / "source-only")
    os.mkfifo(cut / "candidates" / "source-only")
    refused(tmp_path, cut, "candidates/source-only is not a folder", real_process=True)
    os.unlink(cut / "candidates" / "source-only")
    summary = cut / "candidates" / "mcc" / "summary.json"
    good = summary.read_text()
    for damage in ({"evals": "none"}, {"selected": [1]}, {"classes": None}, {"seconds": "soon"}):
        summary.write_text(json.dumps({**json.loads(good), **damage}))
        refused(tmp_path, cut, f"{summary} is not a golabels summary (its {next(iter(damage))} is missing or of the wrong kind)")


def test_a_search_folder_without_its_config_names_the_file(stopped_search, tmp_path):
    cut, _, _ = copy_of(stopped_search, tmp_path)
    (cut / "config.yaml").unlink()
    refused(tmp_path, cut, f"the search's config {cut / 'config.yaml'} not found")
    os.mkfifo(cut / "config.yaml")
    refused(tmp_path, cut, f"the search's config {cut / 'config.yaml'} is a FIFO", real_process=True)


@pytest.mark.parametrize("args, message", [
    (["--search-recipes", "bnm+mcc,mcc+bnm"], "names one recipe twice, as 'bnm+mcc' and 'mcc+bnm'"),
    (["--search-recipes", ",".join(f"{a}+{b}" for a in ("cdan-e", "cdan", "dann", "dann-e", "gvb", "asan") for b in ("mcc", "bnm", "im"))],
     "takes 16 at most, and --search-recipes names 18"),
    (["--threads", "1000000"], "--threads must be a non-negative integer of at most 1024"),
    (["--threads", "99999999999999999999"], "--threads must be a non-negative integer of at most 1024"),
])
def test_refusals_that_come_before_training(domains, tmp_path, args, message):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "auto", *args, "--out", tmp_path / "run")
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum, when", [("SIGINT", "a candidate's final writes"), ("SIGTERM", "between candidates")])
def test_every_signal_during_a_search_stops_it_before_the_next_stage(domains, tmp_path, signum, when):
    """Issue 54 item 4: a signal during a candidate's final writes was lost (the search went on and
    exited 0), and between candidates SIGINT said a bare 'interrupted' and SIGTERM killed the process."""
    import signal as signals

    from golabels_cli import training
    from golabels_cli.errors import Interrupted
    from golabels_cli.progress import CandidateStarted, RunFinished
    from test_search import search_config

    started = []

    def send(event):
        if isinstance(event, CandidateStarted):
            started.append(event.recipe)
        last_writes = isinstance(event, RunFinished) and started == ["cdan-e+bnm"]  # sent inside the run's final-writes handler
        between = isinstance(event, CandidateStarted) and event.recipe == "mcc"
        if (last_writes if when == "a candidate's final writes" else between):
            os.kill(os.getpid(), getattr(signals, signum))

    with pytest.raises(Interrupted) as stopped:
        training.adapt(search_config(domains, "ensemble"), out=tmp_path / "cut", progress=send)
    word = "interrupted" if signum == "SIGINT" else "terminated"
    assert f"{word} before candidate mcc (2 of 3) started" in stopped.value.message
    assert stopped.value.hint == f"resume the search with: golabels adapt --resume {tmp_path / 'cut'}"
    assert (tmp_path / "cut" / "candidates" / "cdan-e+bnm" / "model.safetensors").is_file()
    assert not (tmp_path / "cut" / "candidates" / "mcc").exists()  # no further candidate
    summary = training.resume(tmp_path / "cut")
    assert summary["search"]["shipped"] == "ensemble" and len(summary["search"]["candidates"]) == 3


def test_one_writer_per_run_folder(stopped_search, domains, tmp_path):
    """Issue 54 item 6: two adapt --exist-ok into one --out at once both exited 0, one's config and
    metrics beside the other's model. While a process writes a run folder (here this test, holding
    the lock a golabels process takes), a second adapt into it, or a resume of it, is refused."""
    from golabels_cli.files import one_writer

    cut, _, _ = copy_of(stopped_search, tmp_path)
    source, target = domains
    single = adapt_tiny(source, target, tmp_path / "single", "--iters", "2")
    # The first as another process runs it; the lock is the folder's, so an in-process call is refused alike.
    for folder, command, real in ((single, ["adapt", source, target, *TINY, "--iters", "2", "--exist-ok", "--out", single], True),
                                  (single, ["adapt", "--resume", single], False),
                                  (cut, ["adapt", "--resume", cut], False)):
        before = tree(tmp_path)
        with one_writer(folder):
            result = cli_subprocess(*command) if real else cli(*command)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        code = result.returncode if real else result.exit_code
        assert code == 2 and len(lines) == 1 and f"another golabels process is writing {folder}" in lines[0], result.stderr
        assert tree(tmp_path) == before
    # the lock goes with the holder that released it: the search resumes now
    assert cli("adapt", "--resume", cut, "--quiet").exit_code == 0


def test_a_search_refused_in_its_first_build_leaves_no_run_folder(domains, tmp_path):
    """Issue 55 item 7: offline without --weights, a search failed with a good line but left
    runs/adapt/exp/config.yaml (the next run went to exp2); a single run leaves nothing."""
    source, target = domains
    args = ["adapt", source, target, "--backbone", "test_resnet", "--freeze-backbone", "--image-size", "32", "--device", "cpu"]
    result = cli_subprocess(*args, cwd=tmp_path)  # pretrained weights, and no hub to fetch them from: as a user's shell runs it
    assert result.returncode == 2 and "cannot fetch pretrained weights for test_resnet" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
    result = cli(*args, "--out", tmp_path / "new" / "run", cwd=tmp_path)
    assert result.exit_code == 2 and "cannot fetch pretrained weights for test_resnet" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
    (tmp_path / "empty").mkdir()  # a folder of the user's: emptied of what the search wrote, kept
    assert cli(*args, "--out", tmp_path / "empty", cwd=tmp_path).exit_code == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty"]
