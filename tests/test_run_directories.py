"""What golabels keeps on disk (issues 35, 44): run directories and what refuses to write into them,
resume of damaged or edited runs, the feature cache, signals at the end of a run, reports of damaged
files, byte-identical replays. Each refused case checks the exit code, one `error:` line naming the
problem, and that no file was changed or created."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cli, cli_subprocess, one_error_line, tree


@pytest.fixture
def crashed(domains, tmp_path, monkeypatch):
    """A run that crashed at iteration 7 of 8: its checkpoint is of iteration 4, and metrics.jsonl
    also holds rows 5 and 6, which a resume must log again."""
    from golabels_cli.training import loop

    real, calls = loop.Step.__call__, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.Step, "__call__", crashing)
    run = tmp_path / "crashed"
    result = cli("adapt", *domains, *TINY, "--iters", "8", "--save-every", "4", "--log-every", "1", "--eval-every", "0", "--out", run)
    assert result.exit_code == 1 and "the checkpoint of iteration 4 is kept" in result.stderr, result.stderr
    monkeypatch.undo()
    return run


def _edit_checkpoint(run: Path, change) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.parametrize("iteration", [-3, 99])
def test_a_checkpoint_iteration_out_of_range_is_refused_before_metrics_change(crashed, iteration):
    _edit_checkpoint(crashed, lambda s: s["loop"].update(iteration=iteration))
    before = tree(crashed)
    result = cli("adapt", "--resume", crashed)
    assert result.exit_code == 2
    one_error_line(result, "checkpoint.pt is damaged", f"saved at iteration {iteration}", "the run has 8")
    assert tree(crashed) == before


def test_a_checkpoint_of_another_method_is_refused_naming_the_difference(crashed):
    _edit_checkpoint(crashed, lambda s: s["config"].update(method="dann"))
    before = tree(crashed)
    result = cli("adapt", "--resume", crashed)
    assert result.exit_code == 2
    one_error_line(result, "config.yaml says method: cdan-e", "checkpoint.pt says dann", "not of the same run")
    assert tree(crashed) == before


def test_an_edited_config_yaml_is_refused_not_ignored(crashed):
    config = crashed / "config.yaml"
    config.write_text(config.read_text().replace("\nlr: 0.01\n", "\nlr: 0.5\n"))
    before = tree(crashed)
    result = cli("adapt", "--resume", crashed)
    assert result.exit_code == 2
    one_error_line(result, "config.yaml says lr: 0.5", "checkpoint.pt says 0.01")
    assert tree(crashed) == before


def test_resume_moves_the_rows_it_discards_aside(crashed):
    rows = (crashed / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(r)["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    result = cli("adapt", "--resume", crashed)
    assert result.exit_code == 0, result.stderr
    assert "2 rows of metrics.jsonl logged after iteration 4 moved to metrics-after-4.jsonl" in result.stderr
    assert (crashed / "metrics-after-4.jsonl").read_text() == "".join(rows[4:])  # byte for byte, not lost
    assert [json.loads(r)["iter"] for r in (crashed / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
    # results.csv is written from the rows in memory: both sessions' rows, as a reader of the files gets them
    from golabels_cli.report import load_run
    from golabels_cli.results import results_table

    table = list(csv.DictReader(io.StringIO((crashed / "results.csv").read_text())))
    columns, expected = results_table(load_run(crashed))
    assert [row["iter"] for row in table] == [str(i) for i in range(1, 9)]
    assert table == [{c: "" if row.get(c) is None else str(row[c]) for c in columns} for row in expected]


def test_resume_in_a_config_file_is_refused(shipped, domains, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"source: {domains[0]}\ntarget: {domains[1]}\nresume: {shipped}\n")
    result = cli("adapt", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "'resume'", "would be ignored", "--resume RUN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("inside", ["source", "target"])
def test_an_out_inside_the_image_folders_is_refused(copy_domains, inside):
    source, target = copy_domains
    folder = source if inside == "source" else target
    before = tree(folder)
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--out", folder / "runs" / "exp")
    assert result.exit_code == 2
    one_error_line(result, f"is inside {inside.upper()}", "would be read as images")
    assert tree(folder) == before


def test_the_default_out_inside_the_source_is_refused(copy_domains):
    source, target = copy_domains
    before = tree(source)
    result = cli("adapt", ".", target, *TINY, "--iters", "1", cwd=source)
    assert result.exit_code == 2
    one_error_line(result, "the default run directory", "is inside SOURCE")
    assert tree(source) == before


def test_exist_ok_moves_the_earlier_run_aside_and_says_so(shipped, domains, tmp_path):
    """Issue 54 item 11: the earlier run's files that the new run does not write (its export, its
    mosaic) stayed beside the new ones without a word. All of them move into earlier-run/."""
    run = Path(shutil.copytree(shipped, tmp_path / "run"))
    (run / "notes.txt").write_text("mine")
    earlier = tree(run)
    rows = len((run / "metrics.jsonl").read_text().splitlines())
    result = cli("adapt", *domains, *TINY, "--iters", "1", "--out", run, "--exist-ok")
    assert result.exit_code == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "--exist-ok" in line)
    for name in ("config.yaml", f"metrics.jsonl ({rows} logged row", "checkpoint.pt", "model.safetensors", "summary.json",
                 "model.onnx", f"moved to {run / 'earlier-run'}"):
        assert name in warning, (name, warning)
    assert "1 other file (notes.txt) left as it is" in warning
    moved = tree(run / "earlier-run")
    assert moved == {name: value for name, value in earlier.items() if name != "notes.txt"}  # nothing lost, byte for byte
    assert (run / "notes.txt").read_text() == "mine" and not (run / "model.onnx").exists()
    again = cli("adapt", *domains, *TINY, "--iters", "1", "--out", run, "--exist-ok", "--quiet")
    assert again.exit_code == 0 and (run / "earlier-run-2" / "model.safetensors").is_file()
    assert tree(run / "earlier-run") == moved  # an earlier set-aside is never written into


def test_a_search_into_a_single_runs_folder_moves_that_run_aside(shipped, domains, tmp_path):
    from test_search import FROZEN

    run = Path(shutil.copytree(shipped, tmp_path / "run"))
    result = cli("adapt", *domains, *TINY, *FROZEN, "--method", "auto", "--search-recipes", "mcc,source-only",
                 "--search-pick", "ensemble", "--out", run, "--exist-ok")
    assert result.exit_code == 0, result.stderr
    assert "held an earlier run: checkpoint.pt, config.yaml, " in result.stderr
    assert not (run / "checkpoint.pt").exists() and (run / "earlier-run" / "checkpoint.pt").is_file()  # a search writes none
    assert sorted(p.name for p in run.iterdir()) == sorted(["candidates", "config.yaml", "earlier-run", "model.safetensors",
                                                            "summary.json"])


def test_a_resume_renames_an_export_of_the_stopped_run(domains, tmp_path):
    """Issue 54 item 11: a model.onnx exported while the run was stopped stayed after the resume,
    under the name export gives the finished model's."""
    from conftest import interrupt_at
    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted

    source, target = domains
    run = tmp_path / "run"
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 4})
    with pytest.raises(Interrupted):
        training.adapt(cfg, out=run, progress=interrupt_at(2))
    assert cli("export", run, "--onnx", "--no-verify").exit_code == 0
    exported = (run / "model.onnx").read_bytes()
    result = cli("adapt", "--resume", run)
    assert result.exit_code == 0, result.stderr
    assert f"{run / 'model.onnx'} was exported before the run ended: renamed model-before-resume.onnx" in result.stderr
    assert (run / "model-before-resume.onnx").read_bytes() == exported and not (run / "model.onnx").exists()


def test_export_into_a_folder_it_cannot_write_fails_before_tracing(shipped, tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: a folder of a pseudo file system then
        folder = Path("/sys")
        if os.access(folder, os.W_OK) and not (folder / ".probe").exists():
            try:
                (folder / ".probe").write_text("")
                pytest.skip("/sys is writable here")
            except OSError:
                pass
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    result = cli("export", shipped, "--onnx", "-o", folder / "model.onnx")
    assert result.exit_code == 2
    one_error_line(result, f"cannot write {folder / 'model.onnx'}", "a folder you can write to")
    assert "export:" not in result.stderr  # no tracing, checking or verifying was started
    assert not (folder / "model.onnx").exists()


def test_a_tampered_feature_cache_is_computed_again_with_a_warning(domains, tmp_path):
    cache = tmp_path / "cache"
    args = [*domains, *TINY, "--iters", "2", "--freeze-backbone", "--cache-dir", cache, "--quiet"]
    assert cli("adapt", *args, "--out", tmp_path / "clean").exit_code == 0
    rows = sorted(cache.rglob("*.npy"))
    clean = [np.load(row) for row in rows[:4]]
    rows[0].unlink()
    os.mkfifo(rows[0])  # opened, it would block for ever
    np.save(open(rows[1], "wb"), np.zeros(5, np.float32))  # another shape
    nan = np.load(rows[2])
    nan[0] = np.nan
    np.save(open(rows[2], "wb"), nan)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }".ljust(117)
    rows[3].write_bytes(b"\x93NUMPY\x01\x00v\x00" + header + b"\n")
    result = cli("adapt", *args[:-1], "--out", tmp_path / "tampered")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: feature cache:")]
    assert sum(int(line.split()[3]) for line in warnings) == 4 and all("computed again" in line for line in warnings), warnings
    # computed again, in other batches: equal up to the order of the sums
    assert all(row.is_file() and np.allclose(np.load(row), values, rtol=1e-4, atol=1e-5) for row, values in zip(rows, clean))


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_after_the_last_step_finishes_or_says_how_to(domains, tmp_path, monkeypatch, signals):
    from golabels_cli.training import loop

    real = loop.save_model

    def signalled(*args, **kwargs):
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "save_model", signalled)
    run = tmp_path / "run"
    result = cli("adapt", *domains, *TINY, "--iters", "2", "--out", run)
    assert "terminated after the last iteration: finishing the final writes" in result.stderr
    if signals == 1:
        assert result.exit_code == 0, result.stderr
        assert (run / "model.safetensors").is_file() and (run / "summary.json").is_file()
        return
    assert result.exit_code == 130
    one_error_line(result, "stopped at once during the final writes", "checkpoint of iteration 2 is kept",
                   f"finish them with: golabels adapt --resume {run}")
    assert not (run / "model.safetensors").exists()
    monkeypatch.undo()
    result = cli("adapt", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (run / "model.safetensors").is_file()


@pytest.mark.parametrize("damage,words", [
    (lambda run: (run / "summary.json").write_text('{"evals": ['), ["summary.json is damaged"]),
    (lambda run: (run / "summary.json").write_text("[1]"), ["summary.json is damaged (not a JSON object)"]),
    (lambda run: (run / "summary.json").write_text('{"golabels_version": "9.0"}'), ["written by golabels 9.0"]),
    (lambda run: (run / "metrics.jsonl").write_text('{"iter": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + '{"iter": 2}\n'),
     ["metrics.jsonl is damaged: line 1 is nested too deeply"]),
], ids=["summary-not-json", "summary-not-object", "summary-other-version", "metrics-nested"])
def test_report_on_damaged_run_files_is_one_line(shipped, tmp_path, damage, words):
    run = Path(shutil.copytree(shipped, tmp_path / "run"))
    damage(run)
    before = tree(run)
    result = cli("report", run)
    assert result.exit_code == 2
    one_error_line(result, *words)
    assert tree(run) == before


def test_a_replayed_config_gives_a_byte_identical_model(shipped, tmp_path):
    # in a new process: the safetensors writer's metadata order differs from process to process
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", "--config", str(shipped / "config.yaml"),
                             "--out", str(tmp_path / "replay"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "replay" / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()


def test_report_on_a_damaged_metrics_file_exits_2_before_plotting(shipped, tmp_path):
    run = Path(shutil.copytree(shipped, tmp_path / "run"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], '{"iter": "x", "loss_cls": "abc"}', *lines[1:]]) + "\n")
    result = cli("report", run)
    assert result.exit_code == 2
    one_error_line(result, "metrics.jsonl is damaged: line 2")
    assert not list(run.glob("report-*.png"))
    (run / "metrics.jsonl").write_text("\n".join([*lines, '{"iter": 5, "loss'] ) + "\n")  # a last row cut short: fine
    assert cli("report", run, "--no-plots").exit_code == 0


def test_eval_confusion_into_a_missing_folder_exits_2_before_the_work(shipped, domains, tmp_path):
    result = cli("eval", shipped, domains[0], "--confusion", tmp_path / "nowhere" / "c.csv", "--device", "cpu")
    assert result.exit_code == 2 and result.stdout == ""
    one_error_line(result, "is not a folder you can write to")


def test_demo_refuses_a_used_folder_and_a_missing_device_leaving_nothing(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("keep me")
    result = cli("demo", "--out", used, "--iters", "1")
    assert result.exit_code == 2
    assert "--exist-ok" not in one_error_line(result, "already exists", "another --out")
    assert [p.name for p in used.iterdir()] == ["mine.txt"]
    result = cli("demo", "--out", tmp_path / "new", "--device", "bogus")
    assert result.exit_code == 2
    one_error_line(result, "unknown --device 'bogus'")
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_that_is_a_fifo_is_never_opened(shipped, tmp_path):
    run = Path(shutil.copytree(shipped, tmp_path / "run"))
    (run / "model.safetensors").unlink()
    (run / "checkpoint.pt").unlink()
    os.mkfifo(run / "checkpoint.pt")
    before = tree(run)
    result = cli_subprocess("adapt", "--resume", run, timeout=60)
    assert result.returncode == 2
    one_error_line(result, "checkpoint", "is a FIFO, not a regular file")
    assert tree(run) == before


def test_images_replaced_under_the_same_names_sizes_and_mtimes_are_not_read_from_the_feature_cache(copy_domains, tmp_path):
    """Issue 54 item 2: the feature cache was keyed on (device, inode, size, mtime), so files
    rewritten in place with their sizes and mtimes kept (a tar extracted with fixed mtimes) read
    the old images' features: eval scored the old images. Keys are of the files' bytes now."""
    from PIL import Image

    from golabels_cli.data import scan_labeled
    from golabels_cli.features import cache_files

    source, target = copy_domains
    labeled = tmp_path / "labeled"
    for png in sorted(target.rglob("*.png")):  # BMPs of one size: two of them can trade contents, sizes kept
        (labeled / png.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(labeled / png.parent.name / f"{png.stem}.bmp")
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert cli("adapt", source, target, *TINY, "--iters", "2", "--freeze-backbone", "--cache-dir", cache, "--quiet",
               "--out", run).exit_code == 0
    before = cli("eval", run, labeled, "--json")
    assert before.exit_code == 0, before.stderr
    [model_key] = [p.name for p in (cache / "features").iterdir()]
    keys_before = cache_files(scan_labeled(labeled), model_key, str(cache))
    first, second = sorted(p for p in labeled.iterdir())[:2]
    for a, b in zip(sorted(first.iterdir()), sorted(second.iterdir())):  # each pair trades bytes, names and times kept
        times = [(p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (a, b)]
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
        for p, ns in zip((a, b), times):
            os.utime(p, ns=ns)
    after = cli("eval", run, labeled, "--json")
    fresh_copy = Path(shutil.copytree(labeled, tmp_path / "fresh"))  # new files: new inodes, a key of their own either way
    fresh = cli("eval", run, fresh_copy, "--json")
    assert after.exit_code == 0 and fresh.exit_code == 0, after.stderr + fresh.stderr
    assert json.loads(after.stdout)["confusion"] == json.loads(fresh.stdout)["confusion"]
    keys_after = cache_files(scan_labeled(labeled), model_key, str(cache))
    assert keys_after == cache_files(scan_labeled(fresh_copy), model_key, str(cache))  # one content, one entry
    swapped = len(list(first.iterdir()))
    assert sum(k != j for k, j in zip(keys_before, keys_after)) == 2 * swapped
    assert all(np.load(f).shape == np.load(keys_before[0]).shape for f in keys_after)
