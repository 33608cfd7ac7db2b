"""What predict reads from and writes to: stdin bounded however long or endless it is, stdout
that may be closed. Each in a real process, as a shell pipeline runs it."""

import subprocess
import sys

import pytest

from conftest import one_error_line


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
