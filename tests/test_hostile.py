"""The hostile-input matrix (issue 26): every input validated before any work, no hang, no wrong
answer with exit 0. Each case checks the exit code, that the error is one line naming what is
wrong, and that nothing was created or lost."""

import base64
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, cli, cli_subprocess, one_error_line, onnx_with_metadata

from golabels_cli.checkpoint import atomic_path, claim_run_dir, write_text_atomic
from golabels_cli.errors import InputError


@pytest.fixture
def shipped(exported):
    """conftest's tiny finished run, holding its model.onnx: tests that change files copy them."""
    return exported[0]


# ---- configuration values ------------------------------------------------------------------------

CONFIG_CASES = [
    ("source: [1, 2]\n", "source must be a string"),
    ("min-crop: abc\n", "min-crop must be a finite number"),
    ("iters: true\n", "iters must be an integer"),
    ("pretrained: 'false'\n", "pretrained must be true or false"),
    ("momentum: 5\n", "momentum must be in [0, 1)"),
    ("weight-decay: .nan\n", "weight-decay must be a finite number"),
    ("lr: .inf\n", "lr must be a finite number"),
    ("trade-off: -1\n", "trade-off must be a non-negative number"),
    ("image-size: 100000\n", "--image-size 100000"),
    ("exist-ok: 'yes'\n", "exist-ok must be true or false"),
    ("out: 3\n", "out must be a string"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "aliases"),
    ("[1, 2]\n", "must be a mapping"),
]


@pytest.mark.parametrize("text,words", CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES])
def test_bad_config_values_exit_2_before_a_run_directory_exists(domains, tmp_path, text, words):
    source, target = domains
    config = tmp_path / "config.yaml"
    # A tiny valid run, its line for the bad key replaced by the bad line (a key given twice is
    # refused): a value let through costs seconds, not a default run.
    tiny = [f"source: {source}", f"target: {target}", "backbone: test_resnet", "pretrained: false", "image-size: 32",
            "device: cpu", "workers: 0", "batch-size: 4", "iters: 1"]
    bad_key = text.split(":")[0]
    config.write_text(text if text.startswith("[") else "".join(f"{line}\n" for line in tiny if line.split(":")[0] != bad_key) + text)
    result = cli("adapt", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value,words", [
    ("--lr", "inf", "lr must be a finite number"),
    ("--trade-off", "nan", "trade-off must be a finite number"),
    ("--image-size", "100000", "needs at least"),
    ("--min-crop", "0", "--min-crop must be in (0, 1]"),
])
def test_bad_option_values_exit_2_before_a_run_directory_exists(domains, tmp_path, flag, value, words):
    source, target = domains
    result = cli("adapt", source, target, *TINY, flag, value, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, words)
    assert not (tmp_path / "run").exists()


def test_an_oversized_config_file_is_refused_unread(domains, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("# padding\n" * 120_000)
    result = cli("adapt", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "larger than 1 MiB")


def test_yaml_numbers_without_a_dot_still_read_as_numbers(domains, tmp_path):
    from golabels_cli.config import build_config, load_yaml

    source, target = domains
    config = tmp_path / "config.yaml"
    config.write_text(f"source: {source}\ntarget: {target}\nweight-decay: 1e-3\n")
    assert build_config(load_yaml(config)).weight_decay == 0.001


# ---- model files: metadata checked against the model -----------------------------------------------


@pytest.mark.parametrize("changes,words", [
    ({"classes": json.dumps(["circle", "square", "triangle", "star"])}, "lists 4 classes in its metadata and its graph gives 3"),
    ({"std": json.dumps([0, 0, 0])}, "bad std"),
    ({"interpolation": "sinc"}, "bad interpolation"),
    ({"crop_mode": "zoom"}, "bad crop_mode"),
    ({"input_size": json.dumps([3, 0, 32])}, "bad input_size"),
    ({"classes": json.dumps(["a", "a", "b"])}, "names repeat"),
    ({"crop_pct": "0"}, "bad crop_pct"),  # 0 is not "absent": it must be in range like any other value
    ({"std": json.dumps([1e-300, 0.2, 0.2])}, "bad std"),  # finite and positive, yet the confidences would be NaN
    ({"mean": json.dumps([1e300, 0, 0])}, "bad mean"),
], ids=["classes", "std", "interpolation", "crop_mode", "input_size", "repeated-classes", "crop_pct-0", "std-tiny", "mean-huge"])
def test_edited_onnx_metadata_is_refused_naming_the_field(shipped, domains, tmp_path, changes, words):
    path = onnx_with_metadata(shipped / "model.onnx", tmp_path / "edited.onnx", **changes)
    result = cli("predict", path, domains[1], "--device", "cpu")
    assert result.exit_code == 2 and result.stdout == ""
    one_error_line(result, words)


def test_a_negative_bottleneck_in_safetensors_metadata_is_refused(shipped, domains, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(shipped / "model.safetensors"), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["bottleneck_dim"] = "-5"
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata=meta)
    for command in (["eval", path, domains[0]], ["export", path, "--onnx", "-o", tmp_path / "m.onnx"], ["predict", path, domains[1]]):
        result = cli(*command, "--device", "cpu") if command[0] != "export" else cli(*command)
        assert result.exit_code == 2, (command, result.stderr)
        one_error_line(result, "bad bottleneck_dim")
    assert not (tmp_path / "m.onnx").exists()


def test_predict_on_a_missing_input_is_a_usage_error_that_writes_nothing(shipped, domains, tmp_path):
    result = cli_subprocess("predict", shipped / "model.onnx", domains[1], tmp_path / "no-such-folder", timeout=60)
    assert result.returncode == 2 and result.stdout == ""  # not even the CSV header: nothing was predicted
    one_error_line(result, f"{tmp_path / 'no-such-folder'} does not exist")
    one = cli_subprocess("predict", shipped / "model.onnx", next((domains[1] / "circle").iterdir()), timeout=60)
    assert one.returncode == 0 and "predicted 1 image in" in one.stderr


# ---- only regular files are opened -----------------------------------------------------------------


def test_predict_with_a_fifo_in_the_folder_returns_with_the_other_rows(shipped, domains, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(domains[1] / "circle", folder)
    os.mkfifo(folder / "waiting.png")
    os.mkfifo(tmp_path / "direct.png")
    n = len(list((domains[1] / "circle").iterdir()))
    result = cli_subprocess("predict", shipped / "model.onnx", folder, tmp_path / "direct.png", timeout=60)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1 + n  # header + every real image
    assert "waiting.png (a FIFO, not a regular file)" in result.stderr
    assert "direct.png (a FIFO, not a regular file)" in result.stderr
    one_error_line(result, f"2 of {n + 2} inputs could not be read")


def test_adapt_and_eval_skip_a_fifo(copy_domains, tmp_path):
    source, target = copy_domains
    os.mkfifo(source / "circle" / "fifo.png")
    os.mkfifo(target / "fifo.png")
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["skipped"] == {"source": 1, "target": 1, "eval": 0}
    assert "fifo.png (a FIFO, not a regular file)" in result.stderr
    result = cli("eval", tmp_path / "run", source, "--device", "cpu", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] == 1


# ---- run directories are claimed atomically ---------------------------------------------------------


def _claim(out, barrier, results):
    barrier.wait()
    try:
        claim_run_dir(out, exist_ok=False)
        results.put("won")
    except InputError:
        results.put("lost")


@pytest.mark.parametrize("existing_empty", [False, True], ids=["new", "empty"])
def test_two_processes_racing_for_one_out_exactly_one_wins(tmp_path, existing_empty):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(20):
        out = tmp_path / f"race{attempt}" / "run"
        if existing_empty:
            out.mkdir(parents=True)
        barrier, results = ctx.Barrier(2), ctx.Queue()
        racers = [ctx.Process(target=_claim, args=(out, barrier, results)) for _ in range(2)]
        for p in racers:
            p.start()
        for p in racers:
            p.join(30)
        assert sorted([results.get(timeout=5), results.get(timeout=5)]) == ["lost", "won"], attempt


# ---- write failures ------------------------------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_names_the_file_and_the_resume(domains, tmp_path, monkeypatch):
    import torch

    source, target = domains
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second save: one checkpoint is already on disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8384 vs 8272")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    result = cli("adapt", source, target, *TINY, "--iters", "4", "--save-every", "2", "--out", run)
    assert result.exit_code == 1
    line = one_error_line(result, "cannot save the training state to", str(run / "checkpoint.pt"),
                          "the checkpoint of iteration 2 is kept", f"golabels adapt --resume {run}")
    assert "inline_container" in line  # what torch said, after what it means


def test_a_failed_final_model_write_names_the_file_and_the_resume(domains, tmp_path, monkeypatch):
    from golabels_cli.training import loop

    source, target = domains

    def fail(*args, **kwargs):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(loop, "save_model", fail)
    run = tmp_path / "run"
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--out", run)
    assert result.exit_code == 1
    one_error_line(result, f"cannot write {run / 'model.safetensors'}", "is kept", f"golabels adapt --resume {run}")
    monkeypatch.undo()
    result = cli("adapt", "--resume", run, "--quiet")
    assert result.exit_code == 0 and (run / "model.safetensors").is_file()


# ---- outputs -------------------------------------------------------------------------------------


def test_outputs_honour_the_umask(shipped, tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        result = cli("export", shipped, "--onnx", "-o", tmp_path / "m.onnx", "--no-verify")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    for name in ("a.txt", "m.onnx"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_jsonl_is_valid_utf8_with_the_raw_name_recoverable(shipped, domains, tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    shutil.copy(next((domains[1] / "circle").iterdir()), raw)
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "predict", str(shipped / "model.onnx"), str(tmp_path),
                             "--format", "jsonl"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert row["path"].endswith("caf\\xe9.png") and base64.b64decode(row["path_base64"]) == raw


def test_predict_reads_nul_separated_paths_with_newlines_in_names(shipped, domains, tmp_path):
    odd = tmp_path / "two\nlines.png"
    shutil.copy(next((domains[1] / "circle").iterdir()), odd)
    missing = tmp_path / "gone\nmissing.png"
    stdin = bytes(odd) + b"\0" + bytes(missing) + b"\0"
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "predict", str(shipped / "model.onnx"), "-", "-0",
                             "--format", "jsonl"], input=stdin, capture_output=True, timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert json.loads(result.stdout)["path"] == str(odd)
    # the missing name's newline is written as \n: each message stays on one line
    assert "gone\\nmissing.png (no such file)" in stderr and len([l for l in stderr.splitlines() if "gone" in l]) == 1


def test_error_lines_stay_one_line_whatever_the_paths_hold(tmp_path):
    result = cli("eval", tmp_path / "no\nsuch\rrun", tmp_path)
    assert result.exit_code == 2
    assert "no\\nsuch\\rrun" in one_error_line(result)


# ---- exit codes, leftovers, surprises -------------------------------------------------------------------


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


def test_a_killed_exports_temporary_is_removed_by_the_next_export(shipped, tmp_path):
    out = tmp_path / "ship"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = out / f".model.onnx.{dead}.abc123.tmp"
    stale.write_bytes(b"half an onnx file")
    live = out / f".model.onnx.{os.getpid()}.def456.tmp"  # another export still writing: left alone
    live.write_bytes(b"in progress")
    result = cli("export", shipped, "--onnx", "-o", out / "model.onnx", "--no-verify")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [live.name, "model.onnx"]


def test_export_never_replaces_a_file_created_while_it_ran(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(FileExistsError):
        with atomic_path(target, replace=False) as tmp:
            tmp.write_text("new")
            target.write_text("someone else's")
    assert target.read_text() == "someone else's" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_target_that_is_the_source_or_inside_it_is_warned_about(domains, tmp_path, where):
    source, _ = domains
    target = source if where == "same" else source / "circle"
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    expected = "the target folder is the source folder" if where == "same" else "the target folder overlaps the source folder"
    assert expected in result.stderr and "are also source images" in result.stderr


def test_one_ctrl_c_stops_predict_while_it_waits_for_paths(shipped, domains):
    import signal
    import time

    image = next((domains[1] / "circle").iterdir())
    # As from a terminal: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    process = subprocess.Popen([sys.executable, "-m", "golabels_cli", "predict", str(shipped / "model.onnx"), "-", "--batch-size", "1",
                                "--workers", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        process.stdin.write(f"{image}\n{image}\n".encode())
        process.stdin.flush()
        assert process.stdout.readline().startswith(b"path,")  # the header: it is running, stdin still open
        process.stdout.readline()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
        assert b"error: interrupted" in process.stderr.read()
    finally:
        process.kill()


@pytest.mark.parametrize("args,words", [
    (["adapt", "a", "b", "--lr", "abc"], ["Invalid value for '--lr'", "see `golabels adapt --help`"]),
    (["adapt", "a", "b", "iters=300"], ["unexpected extra argument", "options are written --iters 300, not iters=300"]),
    (["adapt", "--bogus"], ["No such option: --bogus"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
])
def test_usage_errors_are_one_line_too(args, words):
    result = cli_subprocess(*args, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "╭" not in result.stderr
    one_error_line(result, *words)


def test_a_killed_feature_extractions_temporary_is_removed_by_the_next_run(domains, tmp_path):
    source, target = domains
    cache = tmp_path / "cache"
    args = [source, target, *TINY, "--iters", "1", "--freeze-backbone", "--cache-dir", cache, "--quiet"]
    assert cli("adapt", *args, "--out", tmp_path / "a").exit_code == 0
    row = sorted(cache.rglob("*.npy"))[0]
    row.unlink()  # a row the killed run never finished...
    stale = row.parent / f".{row.name}.999999999.abc123.tmp"  # ...and its temporary (no such PID)
    stale.write_bytes(b"half a row")
    assert cli("adapt", *args, "--out", tmp_path / "b").exit_code == 0
    assert row.is_file() and not stale.exists()
