"""What a user sees: progress of the slow steps, the help screen, the resolved config (issue 25)."""

import dataclasses
import json
import inspect
import re
from pathlib import Path

import pytest
import yaml

from conftest import TINY, adapt_tiny, cli, cli_subprocess, interrupt_at, read_jsonl
from golabels_cli.synthetic import make_two_domains


@pytest.fixture(scope="module")
def five_hundred(tmp_path_factory):
    """A source and a 500-image labeled target, and a tiny run trained on them."""
    root = tmp_path_factory.mktemp("five_hundred")
    source, target = make_two_domains(root, per_class=167, size=32, seed=2)
    run = adapt_tiny(source, target, root / "run", "--iters", "2")
    return source, target, run


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_slow_steps_print_progress_lines_without_a_terminal(five_hundred, command, monkeypatch):
    from golabels_cli import console

    # 501 tiny images take under a second here: as slow as a real folder, every line is due.
    monkeypatch.setattr(console.StepProgress, "PLAIN_INTERVAL_S", 0.0)
    monkeypatch.setattr(console.StepProgress, "QUIET_BELOW_S", 0.0)
    source, target, run = five_hundred
    args = [command, run, target, "--device", "cpu", "--workers", "0"]
    shown = cli(*args)
    assert shown.exit_code == 0, shown.stderr
    step = "eval" if command == "eval" else "predict"
    periodic = [line for line in shown.stderr.splitlines() if re.match(rf"{step}: \d+/(501|\?) images, \d+/s", line)]
    assert len(periodic) >= 2, shown.stderr
    if command == "eval":
        assert re.search(r"^eval: 501 images in [0-9.]+s", shown.stderr, re.M), shown.stderr
    quiet = cli(*args, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_quick_step_prints_nothing(five_hundred):
    source, target, run = five_hundred
    from golabels_cli.console import StepProgress

    shown = cli_subprocess("eval", run, target, "--device", "cpu", "--workers", "0")
    assert shown.returncode == 0, shown.stderr
    # well under QUIET_BELOW_S on an idle machine; on a loaded one the closing line may come, and
    # then only because the step took that long
    closing = re.search(r"^eval: 501 images in ([0-9.]+)s", shown.stderr, re.M)
    assert closing is None or float(closing.group(1)) >= StepProgress.QUIET_BELOW_S - 0.05, shown.stderr


def test_periodic_lines_name_the_step_and_its_eta(capsys, monkeypatch):
    from golabels_cli import console
    from golabels_cli.progress import listening, tracked

    monkeypatch.setattr(console.StepProgress, "PLAIN_INTERVAL_S", 0.0)
    monkeypatch.setattr(console.StepProgress, "QUIET_BELOW_S", 0.0)
    with listening(console.StepProgress()):
        for _ in tracked(range(4), "features: target", 4):
            pass
    lines = capsys.readouterr().err.splitlines()
    assert "features: target: 1/4 images" in lines[0] and "eta" in lines[0]
    assert lines[-1].startswith("features: target: 4 images in ")


def test_nothing_listens_in_the_library():
    from golabels_cli.progress import tracked

    assert list(tracked(iter([1, 2, 3]), "anything", 3)) == [1, 2, 3]


def test_the_data_report_comes_before_the_features(domains, tmp_path, monkeypatch):
    from golabels_cli import console

    monkeypatch.setattr(console.StepProgress, "QUIET_BELOW_S", 0.0)  # every step's closing line, however quick
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--freeze-backbone", "--cache-dir", tmp_path / "cache",
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    report = next(i for i, line in enumerate(lines) if line.startswith("source: "))
    features = next(i for i, line in enumerate(lines) if line.startswith("features: source"))
    assert report < features
    assert all(len(line) > 80 for line in lines if line.startswith("source: "))  # one line, never hard-wrapped
    # a second run on the same folders computes nothing, and says where its features came from
    again = cli_subprocess("adapt", source, target, *TINY, "--iters", "2", "--freeze-backbone", "--cache-dir", tmp_path / "cache",
                           "--out", tmp_path / "run2")
    assert again.returncode == 0, again.stderr
    reused = [line for line in again.stderr.splitlines() if "reused from the cache" in line]
    assert len(reused) >= 2 and reused[0].startswith("features: source: all ") and str(tmp_path / "cache") in reused[0]


def test_export_reports_its_steps_piped(exported, tmp_path):
    result = cli_subprocess("export", exported[0], "--onnx", "--output", tmp_path / "model.onnx")
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("export: tracing, checking, verifying: step")]
    assert [line.split(",")[2] for line in steps] == [" verifying: step 1 of 3", " verifying: step 2 of 3", " verifying: step 3 of 3"]
    assert "images" not in " ".join(line for line in result.stderr.splitlines() if line.startswith("export: "))  # steps, not images


def test_help_groups_every_option_in_panels():
    from golabels_cli import cli as cli_module
    from golabels_cli.config import AdaptConfig

    result = cli_subprocess("adapt", "--help", env={"COLUMNS": "80"})
    text = result.stdout
    assert result.returncode == 0
    for panel in ("Data", "Method and Go-labels", "Training", "Evaluation and selection", "Label shift", "Performance",
                  "Run directory and output"):
        assert f"─ {panel} ─" in text, panel
    assert "SOURCE/<class>/" in text
    assert "Usage: golabels adapt [OPTIONS] SOURCE TARGET" in text  # required, unless --config or --resume gives them
    flat = " ".join(text.split())
    for f in dataclasses.fields(AdaptConfig):
        if f.name not in ("source", "target"):
            assert f"--{f.name.replace('_', '-')}" in flat, f.name
    # One source of truth: every config key is an option of adapt with the same default.
    params = inspect.signature(cli_module.adapt).parameters
    for f in dataclasses.fields(AdaptConfig):
        assert f.name in params, f.name
        assert params[f.name].default == f.default, (f.name, params[f.name].default, f.default)


@pytest.mark.parametrize("command", ["", "adapt", "eval", "export", "predict", "report", "demo"])
def test_help_reads_whole_at_80_columns(command):
    """Every command's --help at 80 columns, in a real process: no word cut short, no type tags,
    metavars that say what to type, and every example on one line of its own."""
    import os
    import subprocess
    import sys

    from golabels_cli import examples

    result = subprocess.run([sys.executable, "-m", "golabels_cli", *([command] if command else []), "--help"], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # rich's mark of a cut word
    assert not re.search(r"<(bool|str|int|float|path|text)>", text) and "{" not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert {"adapt": "SOURCE TARGET", "eval": "RUN_OR_MODEL DIR", "export": "RUN_OR_MODEL", "predict": "MODEL [INPUTS]",
            "report": "RUN"}.get(command, "") in usage
    epilog = {"adapt": examples.ADAPT_EPILOG, "eval": examples.EVAL_EPILOG, "export": examples.EXPORT_EPILOG,
              "predict": examples.PREDICT_EPILOG, "report": examples.REPORT_EPILOG, "demo": examples.DEMO_EPILOG}.get(command, "")
    shown = [line.strip() for line in text.splitlines()]
    for example in (line.strip() for line in epilog.splitlines() if line.startswith("    golabels") or line.startswith("    find")):
        assert example in shown, example  # whole, on one line: never wrapped mid-command
    if command == "adapt":
        assert "golabels adapt src/ tgt/ --freeze-backbone" in text  # the CPU's path, shown where a new user looks


def test_help_piped_into_head_ends_quietly():
    import subprocess
    import sys

    shell = f"{sys.executable} -m golabels_cli adapt --help | head -3"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert "Traceback" not in result.stderr and "Usage" in result.stdout


def test_print_config_replays_to_the_same_run(domains, tmp_path):
    source, target = domains
    printed = cli("adapt", source, target, *TINY, "--iters", "2", "--method", "dann", "--print-config")
    assert printed.exit_code == 0, printed.stderr
    assert not (tmp_path / "run").exists() and printed.stderr == ""
    config = yaml.safe_load(printed.stdout)
    assert config["method"] == "dann" and config["iters"] == 2 and config["trade-off"] == 1.0
    # every default filled in, the backbone's input size included; what only the run decides is named
    assert config["lr-gamma"] == 10.0 and config["eval-every"] == 0 and config["workers"] == 0 and config["image-size"] == 32
    # (search-recipes and search-pick are --method auto's: null in any other run; teacher: a taught run's)
    assert config["cache-dir"] and [k for k, v in config.items() if v is None] == ["search-recipes", "search-pick", "teacher", "weights",
                                                                                    "eval-dir", "logger"]
    assert printed.stdout.startswith("# golabels adapt --config FILE replays this run") and "device auto:" in printed.stdout
    own = cli("adapt", source, target, "--backbone", "test_resnet", "--no-pretrained", "--iters", "10000", "--print-config")
    resolved = yaml.safe_load(own.stdout)
    assert resolved["image-size"] == 160 and resolved["eval-every"] == 1000 and resolved["lr-gamma"] == 0.002  # test_resnet's own 160 px
    (tmp_path / "config.yaml").write_text(printed.stdout)
    result = cli("adapt", "--config", tmp_path / "config.yaml", "--out", tmp_path / "replay", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "replay" / "config.yaml").read_text() == printed.stdout


def test_a_replayed_config_recomputes_what_follows_the_options_changed(domains, tmp_path):
    source, target = domains
    printed = cli("adapt", source, target, "--backbone", "test_resnet", "--no-pretrained", "--iters", "10000", "--print-config")
    (tmp_path / "run.yaml").write_text(printed.stdout)
    assert yaml.safe_load(printed.stdout)["lr-gamma"] == 0.002 and yaml.safe_load(printed.stdout)["eval-every"] == 1000
    longer = cli("adapt", "--config", tmp_path / "run.yaml", "--iters", "20000", "--print-config")
    assert longer.exit_code == 0, longer.stderr
    config = yaml.safe_load(longer.stdout)
    assert config["lr-gamma"] == 0.001 and config["eval-every"] == 2000 and config["image-size"] == 160
    assert "lr-gamma, eval-every: computed again for the options given here" in longer.stderr
    kept = cli("adapt", "--config", tmp_path / "run.yaml", "--iters", "20000", "--lr-gamma", "0.002", "--print-config")
    assert yaml.safe_load(kept.stdout)["lr-gamma"] == 0.002  # given as well: kept
    same = cli("adapt", "--config", tmp_path / "run.yaml", "--print-config")
    assert same.stdout == printed.stdout and "computed again" not in same.stderr  # a plain replay changes nothing


def test_eval_every_default_is_a_tenth_of_the_run_spaced_by_what_an_evaluation_costs():
    from golabels_cli.config import default_eval_every

    assert [default_eval_every(n, True) for n in (150, 200, 1000, 10000)] == [0, 100, 100, 1000]
    assert [default_eval_every(n, False) for n in (1000, 2000, 3000, 10000, 50000)] == [0, 1000, 1000, 1000, 5000]


def test_results_figure_is_left_in_every_finished_run(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "4", "--eval-every", "2", "--eval-dir", target)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["results_figure"] == "results.png"
    assert (run / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_plots_draws_the_confusion_matrix(exported, domains, tmp_path):
    import shutil

    run = Path(shutil.copytree(exported[0], tmp_path / "run"))
    result = cli("eval", run, domains[1], "--plots", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    name = Path(domains[1]).name
    figures = [Path(f) for f in json.loads(result.stdout)["confusion_figures"]]
    assert figures == [run / f"confusion-{name}.png", run / f"confusion-{name}-counts.png"]
    first = [f.read_bytes() for f in figures]
    assert all(data[:4] == b"\x89PNG" for data in first)
    # a second evaluation of the same folder writes a pair of its own; the first pair is left as it was
    again = cli("eval", run, domains[1], "--plots", "--device", "cpu")
    assert again.exit_code == 0, again.stderr
    assert f"confusion-{name}-2.png (normalized), " in again.stdout and (run / f"confusion-{name}-2-counts.png").is_file()
    assert [f.read_bytes() for f in figures] == first


def test_tensorboard_holds_every_logged_row(domains, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from golabels_cli.trackers import FINAL_KEYS, TAGS

    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "6", "--log-every", "2", "--logger", "tensorboard",
                     "--eval-dir", target)
    # One session, one event file: the rows, the hyper-parameters and the final figures together.
    files = [p for p in (run / "tensorboard").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents."), files
    events = EventAccumulator(str(files[0]))
    events.Reload()
    rows = read_jsonl(run / "metrics.jsonl")
    logged = [(e.step, e.value) for e in events.Scalars("loss/cls")]
    assert logged == [(r["iter"], pytest.approx(r["loss_cls"], rel=1e-6)) for r in rows]  # stored as float32
    assert [s for s, _ in logged] == [2, 4, 6]
    # Every key the loop writes is filed in a group, none left to the fallback.
    assert {k for r in rows for k in r} - {"iter", "target_prior", "predicted_share", "source_predicted_share"} <= set(TAGS)
    tags = events.Tags()["scalars"]
    groups = {"loss", "discriminator", "validators", "target", "train", "final"}
    assert all(tag.count("/") == 1 and tag.split("/")[0] in groups for tag in tags), tags
    for tag in ("loss/adv", "discriminator/acc", "validators/snd", "target/acc", "target/predicted_shift", "train/lr"):
        assert tag in tags, (tag, tags)
    summary = json.loads((run / "summary.json").read_text())
    for key in FINAL_KEYS:
        (final,) = events.Scalars(f"final/{key}")
        assert final.step == 6 and final.value == pytest.approx(summary[key], rel=1e-6)
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        events.PluginTagToContent("hparams"))


def test_tensorboard_tags_name_the_group_once():
    from golabels_cli.trackers import tensorboard_tag

    assert tensorboard_tag("loss_cls") == "loss/cls" and tensorboard_tag("loss_new") == "loss/new"
    assert tensorboard_tag("disc_acc_src") == "discriminator/acc_src" and tensorboard_tag("relabeled_new") == "discriminator/relabeled_new"
    assert tensorboard_tag("snd") == "validators/snd" and tensorboard_tag("target_acc") == "target/acc"
    assert tensorboard_tag("lambda") == "train/lambda" and tensorboard_tag("something_new") == "train/something_new"


def test_mlflow_holds_the_metrics_the_config_and_the_final_figures(domains, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "4", "--log-every", "2", "--logger", "mlflow", "--eval-dir", target)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("golabels")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert logged.data.params["method"] == "cdan-e" and logged.data.params["iters"] == "4"
    history = [(m.step, round(m.value, 5)) for m in client.get_metric_history(logged.info.run_id, "loss_cls")]
    assert history == [(r["iter"], round(r["loss_cls"], 5)) for r in read_jsonl(run / "metrics.jsonl")]
    summary = json.loads((run / "summary.json").read_text())
    assert logged.data.metrics["final_target_acc"] == pytest.approx(summary["target_acc"])


def test_a_missing_tracker_is_one_line_before_anything_runs(domains, tmp_path, monkeypatch):
    import importlib.util

    from test_inputs import assert_one_line_error

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert_one_line_error(cli("adapt", *domains, *TINY, "--logger", "mlflow", "--out", tmp_path / "run"), "pip install 'golabels[mlflow]'")
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_times_its_own_session(domains, tmp_path):

    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.tables import print_adapt_summary
    from golabels_cli.errors import Interrupted

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 8})

    interrupt = interrupt_at(3)

    with pytest.raises(Interrupted):
        training.adapt(cfg, out=tmp_path / "cut", progress=interrupt)
    summary = training.resume(tmp_path / "cut")
    assert summary["resumed_at"] == 3 and 0 < summary["session_seconds"] < summary["seconds"]
    assert summary["images_per_s"] == pytest.approx(5 * 8 / summary["session_seconds"], rel=0.05)  # of rounded seconds
    from golabels_cli import console

    with console.stdout.capture() as captured:
        print_adapt_summary(summary)
    assert "this one: iterations 4-8" in " ".join(captured.get().split())


def test_the_summary_times_the_training_steps_apart_from_evaluating_and_saving(domains, tmp_path, monkeypatch):
    """train_images_per_s is over the steps alone (issue 43): a slow evaluation and slow
    checkpoint writes lower images_per_s, not it."""
    import time

    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.training import loop

    real_validate, real_save = loop.validate, loop.save_checkpoint
    monkeypatch.setattr(loop, "validate", lambda *a: (time.sleep(1.0), real_validate(*a))[1])
    monkeypatch.setattr(loop, "save_checkpoint", lambda *a: (time.sleep(0.5), real_save(*a))[1])
    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 8, "eval_every": 4, "save_every": 2})
    summary = training.adapt(cfg, out=tmp_path / "run")
    assert summary["eval_seconds"] >= 2.0  # two evaluations
    assert summary["step_seconds"] <= summary["session_seconds"] - summary["eval_seconds"] - 1.5  # three checkpoints before the end
    assert summary["train_images_per_s"] == pytest.approx(8 * 8 / summary["step_seconds"], rel=0.05)
    assert summary["train_images_per_s"] > summary["images_per_s"]


def test_a_taken_run_directory_fails_before_the_data_report(domains, tmp_path):
    from test_inputs import assert_one_line_error

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("the user's")
    result = cli("adapt", *domains, *TINY, "--out", tmp_path / "run")
    assert_one_line_error(result, "already exists")
    assert result.stderr.count("\n") == 1 and (tmp_path / "run" / "keep.txt").read_text() == "the user's"


def test_report_at_80_columns_cuts_no_figure(domains, tmp_path):
    import os

    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "6", "--eval-every", "2", "--eval-dir", target, "--log-every", "2",
                     "--domain-labels", "go")
    rows = read_jsonl(run / "metrics.jsonl")
    narrow = cli_subprocess("report", run, "--no-plots", env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    tables = [line for line in narrow.stdout.splitlines() if "│" in line or "┃" in line]
    assert "…" not in narrow.stdout and tables and max(len(line) for line in tables) <= 80  # piped prose stays one line per sentence
    assert f"{rows[-1]['loss_cls']:.3f}" in narrow.stdout and f"{rows[-1]['snd']:.4f}" in narrow.stdout
    assert "left out at this width: " in narrow.stdout  # whole columns go, and the report says which
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess_report(run, env)
    assert "left out" not in piped and "adv grad" in piped and "relabeled src/tgt" in piped  # piped: every column, however wide


def subprocess_report(run, env):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "golabels_cli", "report", str(run), "--no-plots"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_candidates_first_line_shows_none_of_the_previous_candidates_figures(capsys):
    """Issue 54 item 15: piped, the first progress line of a search's second candidate showed the
    first candidate's last lr, cls and tgt-acc."""
    from golabels_cli.console import AdaptProgress
    from golabels_cli.progress import CandidateStarted, RowLogged, RunStarted, StepDone

    progress = AdaptProgress()
    assert not progress.live  # the test's stderr is no terminal: plain lines
    for index in range(2):
        progress(CandidateStarted(index, 2, "mcc", f"run/candidates/{index}", None))
        progress(RunStarted(f"run/candidates/{index}", 4, 0, "cpu", ["a", "b"], 1, ("cls",)))
        progress(StepDone(1))
        if index == 0:
            progress(RowLogged({"iter": 4, "lr": 0.123, "loss_cls": 9.87, "target_acc": 0.555}))
    lines = capsys.readouterr().err.splitlines()
    first_of_second = [line for line in lines if line.startswith("iter 1/4")][-1]
    assert "lr" not in first_of_second and "9.87" not in first_of_second and "0.555" not in first_of_second, first_of_second
    assert any("cls 9.87" in line for line in lines)  # the first candidate's own line had them


def test_a_run_without_matplotlib_says_so_once_at_the_end(domains, tmp_path, monkeypatch):
    """Issue 55 item 6: without matplotlib a run wrote no results.png and no mosaic, and said nothing."""
    from golabels_cli import results

    monkeypatch.setattr(results, "plots_available", lambda: False)
    monkeypatch.setattr(results, "pyplot", lambda: None)
    result = cli("adapt", *domains, *TINY, "--iters", "2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "matplotlib is not installed" in line]
    assert lines == ["no results.png or target-mosaic.png: matplotlib is not installed (pip install 'golabels[plots]')"]
    assert result.stderr.rstrip().endswith(lines[0]) and not (tmp_path / "run" / "results.png").exists()
