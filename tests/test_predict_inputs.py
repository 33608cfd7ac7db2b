"""What predict is handed (issues 26, 35): missing inputs, FIFOs, names that are not UTF-8 or hold
newlines, an endless or endlessly long stdin, a closed stdout, an endless wait for paths, and
models whose metadata lies about their sizes. Each refused case exits 2 with one line before any
row; each taken one writes the other rows."""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import TINY, cli, cli_subprocess, csv_rows, image_paths, one_error_line, onnx_with_metadata


def test_predict_on_a_missing_input_is_a_usage_error_that_writes_nothing(shipped, domains, tmp_path):
    result = cli_subprocess("predict", shipped / "model.onnx", domains[1], tmp_path / "no-such-folder", timeout=60)
    assert result.returncode == 2 and result.stdout == ""  # not even the CSV header: nothing was predicted
    one_error_line(result, f"{tmp_path / 'no-such-folder'} does not exist")
    one = cli_subprocess("predict", shipped / "model.onnx", next((domains[1] / "circle").iterdir()), timeout=60)
    assert one.returncode == 0 and "predicted 1 image in" in one.stderr


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
    assert "gone\\nmissing.png (no such file)" in stderr and len([line for line in stderr.splitlines() if "gone" in line]) == 1


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


@pytest.mark.parametrize("changes,words", [
    ({"input_size": json.dumps([3, 8192, 8192])}, "says its input is 3x8192x8192 in its metadata and its graph takes 3x32x32"),
    ({"crop_pct": "0.000001"}, "bad crop_pct in its golabels metadata (must be in [0.25, 1]"),
], ids=["input-size", "crop-pct"])
def test_onnx_sizes_are_checked_against_the_graph_before_any_image(shipped, domains, tmp_path, changes, words):
    path = onnx_with_metadata(shipped / "model.onnx", tmp_path / "edited.onnx", **changes)
    result = cli_subprocess("predict", path, domains[1], timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    one_error_line(result, words)


def test_an_image_two_million_pixels_wide_and_one_high_is_skipped(copy_domains, shipped, tmp_path):
    from PIL import Image

    source, target = copy_domains
    Image.new("L", (2_000_000, 1)).save(source / "circle" / "line.png")  # 2 KB on disk
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["skipped"]["source"] == 1
    assert "line.png (2000000x1 px: an aspect ratio beyond 100:1" in result.stderr
    predicted = cli_subprocess("predict", shipped / "model.onnx", source / "circle" / "line.png", timeout=120)
    assert predicted.returncode == 1 and "aspect ratio beyond 100:1" in predicted.stderr
    one_error_line(predicted, "1 of 1 input could not be read")


def test_predict_in_a_shell_pipeline_with_unreadable_inputs(exported, domains, tmp_path):
    run, _ = exported
    _, target = domains
    images = Path(shutil.copytree(target, tmp_path / "imgs"))
    (images / "circle" / "broken.png").write_bytes(b"not a png at all")
    (images / "circle" / "empty.png").write_bytes(b"")
    odd = images / "name, with \"quotes\".png"
    shutil.copy(images / "square" / os.listdir(images / "square")[0], odd)
    command = (
        f"find {images} -name '*.png' | {sys.executable} -m golabels_cli predict {run / 'model.onnx'} - "
        f"| {sys.executable} -c 'import sys, csv; rows = list(csv.reader(sys.stdin)); print(len(rows) - 1, rows[0])'"
    )
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300)
    # 25 readable images (24 + the oddly named one) give 25 rows; the two broken ones are named on stderr, exit 1.
    assert result.stdout.strip() == "25 ['path', 'label', 'confidence']", result.stderr
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "empty.png" in result.stderr
    assert "2 of 27 inputs could not be read" in result.stderr and "Traceback" not in result.stderr
    plain = cli("predict", run / "model.onnx", odd)
    assert csv_rows(plain.stdout)[0]["path"] == str(odd)  # CSV quoting keeps the comma and quotes


def test_predict_keeps_non_utf8_file_names(exported, domains, tmp_path):
    run, _ = exported
    _, target = domains
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    shutil.copy(image_paths(target)[0], name)
    result = subprocess.run(
        [sys.executable, "-m", "golabels_cli", "predict", str(run / "model.onnx"), "-"],
        input=name + b"\n", capture_output=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith(name + b",")


def test_predict_bad_model_or_inputs_exit_2_with_one_line(exported, domains, tmp_path):
    run, _ = exported
    _, target = domains
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes((run / "model.onnx").read_bytes()[:5000])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    foreign = tmp_path / "foreign.onnx"
    plain = onnx.load(str(run / "model.onnx"))
    del plain.metadata_props[:]
    onnx.save(plain, str(foreign))
    (tmp_path / "empty").mkdir()
    cases = [
        ((corrupt, target), "cannot load ONNX model"),
        ((text, target), "cannot load ONNX model"),
        ((foreign, target), "not a golabels ONNX model"),
        ((tmp_path / "notes.txt", target), "does not exist"),
        ((tmp_path / "no-run", target), "does not exist"),
        ((run / "metrics.jsonl", target), "not a model file"),
        ((run / "model.onnx",), "no inputs given"),
        ((run / "model.onnx", tmp_path / "empty"), "no images found"),
        ((run / "model.onnx", target, "--top-k", "4"), "more than the model's 3 classes"),
        ((run / "model.onnx", target, "--format", "xml"), "unknown --format"),
    ]
    for args, words in cases:  # in-process: the empty stdin below is a real process's
        result = cli("predict", *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and result.stdout == ""
    empty_stdin = subprocess.run([sys.executable, "-m", "golabels_cli", "predict", str(run / "model.onnx"), "-"],
                                 input="", capture_output=True, text=True, timeout=300)
    assert empty_stdin.returncode == 2 and "no images found" in empty_stdin.stderr


def predict(args, stdin=None, stdout=subprocess.PIPE, timeout=60):
    return subprocess.run([sys.executable, "-m", "golabels_cli", "predict", *map(str, args)], stdin=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=timeout)


@pytest.mark.parametrize("null, words", [
    (False, "a line of stdin is longer than any path (4096 bytes)"),
    (True, "stdin gave 65,536 empty entries in a row and no path"),
], ids=["lines", "nul-separated"])
def test_an_endless_stdin_is_refused_in_bounded_memory(exported, null, words):
    """/dev/zero grew predict to 4.9 GB in 9 s (one endless line), or read for ever with -0."""
    run, _ = exported
    with open("/dev/zero", "rb") as zeros:
        result = predict([run / "model.onnx", "-", *(["-0"] if null else [])], stdin=zeros)
    assert result.returncode == 2
    one_error_line(result, words)


def test_a_line_longer_than_a_path_is_refused(exported, domains, tmp_path):
    run, _ = exported
    first = sorted(domains[1].rglob("*.png"))[0]
    (tmp_path / "in.txt").write_bytes(f"{first}\n".encode() + b"x" * 5000 + b"\n")
    with open(tmp_path / "in.txt", "rb") as lines:
        result = predict([run / "model.onnx", "-"], stdin=lines)
    assert result.returncode == 2
    one_error_line(result, "longer than any path")


def test_a_path_of_4096_bytes_is_still_a_path(exported, tmp_path):
    run, _ = exported
    (tmp_path / "in.txt").write_bytes(b"/" + b"a" * 4095 + b"\r\n")
    with open(tmp_path / "in.txt", "rb") as lines:
        result = predict([run / "model.onnx", "-"], stdin=lines)
    assert b"longer than any path" not in result.stderr  # read as a path (one that does not exist)


def test_a_closed_stdout_is_one_line_not_a_traceback(exported, domains):
    run, _ = exported
    result = subprocess.run(f'"{sys.executable}" -m golabels_cli predict "{run / "model.onnx"}" "{domains[1]}" >&-', shell=True,
                            stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 2
    one_error_line(result, "standard output is closed")
