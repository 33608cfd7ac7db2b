"""The hostile-input matrix, round two (issue 35), for what users hand golabels: names that break
pipelines, linked folders, images and models that claim absurd sizes, seeds and weights files.
Each refused case checks the exit code, one `error:` line naming the problem, and that no file was
changed or created; each taken case, what was taken and what was warned."""

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, cli, cli_subprocess, onnx_with_metadata, one_error_line, tree

LATIN1 = b"caf\xe9"  # "café" as Latin-1: not valid UTF-8


@pytest.fixture
def shipped(exported):
    return exported[0]


def _run(*args, stdin=None):
    """golabels in a process, bytes in and out: what a pipeline reads."""
    return subprocess.run([sys.executable, "-m", "golabels_cli", *map(str, args)], input=stdin, capture_output=True, timeout=300)


def _strict_json(data: bytes):
    return json.loads(data.decode("utf-8"))  # strict: raises on bytes that are not UTF-8


def _from_base64(text: str) -> bytes:
    return base64.b64decode(text)


# ---- outputs that read back with the standard parsers ---------------------------------------------------


def test_every_output_reads_back_with_the_standard_parsers(copy_domains, tmp_path):
    source, target = copy_domains
    for folder in (source, target):
        os.rename(folder / "circle", os.fsencode(folder) + b"/" + LATIN1)
    odd = ["carriage\rreturn.png", 'comma,and"quote.png', "new\nline.png"]
    originals = sorted((target / "square").iterdir())
    for name, image in zip(odd, originals):
        image.rename(target / "square" / name)
    run = tmp_path / "run"
    adapt = _run("adapt", source, target, *TINY, "--iters", "2", "--out", run, "--json", "--quiet")
    assert adapt.returncode == 0, adapt.stderr
    for document in (adapt.stdout, (run / "summary.json").read_bytes()):
        summary = _strict_json(document)
        assert summary["classes"][0] == "caf\\xe9" and _from_base64(summary["classes_base64"][0]) == LATIN1
        assert summary["classes_base64"][1:] == [None, None]
    assert list(csv.DictReader(io.StringIO((run / "results.csv").read_text(), newline="")))

    evaluated = _run("eval", run, source, "--json", "--device", "cpu", "--confusion", tmp_path / "confusion.csv")
    assert evaluated.returncode == 0, evaluated.stderr
    per_class = _strict_json(evaluated.stdout)["per_class"]
    assert per_class[0]["name"] == "caf\\xe9" and _from_base64(per_class[0]["name_base64"]) == LATIN1
    with open(tmp_path / "confusion.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        confusion = list(csv.reader(f))
    assert [len(row) for row in confusion] == [4] * 4 and os.fsencode(confusion[1][0]) == LATIN1  # the name's bytes as they were

    report = _run("report", run, "--json", "--no-plots")
    assert report.returncode == 0 and _strict_json(report.stdout)["summary"]["classes"][0] == "caf\\xe9"

    images = sum(1 for _ in target.rglob("*.png"))
    as_csv = _run("predict", run, target, "--device", "cpu")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.reader(io.StringIO(as_csv.stdout.decode("utf-8", "surrogateescape"), newline="")))
    assert len(rows) == 1 + images and all(len(row) == 3 for row in rows)
    assert {Path(row[0]).name for row in rows[1:]} >= set(odd)  # each odd name whole, in one row
    as_jsonl = _run("predict", run, target, "--device", "cpu", "--format", "jsonl")
    lines = [_strict_json(line) for line in as_jsonl.stdout.splitlines()]
    assert len(lines) == images
    latin = [row for row in lines if "path_base64" in row]
    assert latin and all(LATIN1 in _from_base64(row["path_base64"]) and "caf\\xe9" in row["path"] for row in latin)
    assert all(_from_base64(row["label_base64"]) == LATIN1 for row in lines if row["label"] == "caf\\xe9")


# ---- linked folders: each image once, in the class of the first folder that reaches it ---------------------


def test_links_are_resolved_once_with_a_warning_for_each(copy_domains, tmp_path):
    source, target = copy_domains
    counts = {c.name: len(list(c.iterdir())) for c in source.iterdir()}
    os.symlink("circle", source / "zz-circle")  # a class folder linking to another: not a class of its own
    os.symlink("..", source / "circle" / "up")  # up the tree: every class again, a loop
    os.symlink("../square", source / "circle" / "square-too")  # into another class's folder
    first = sorted((source / "circle").glob("*.png"))[0]
    os.symlink(first, source / "triangle" / "also-circle.png")  # a second name of one image
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--val-split", "0", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["images"]["source"] == sum(counts.values())
    expected = {
        "zz-circle": "a link to class folder circle: not a class of its own",
        "circle/up": "which holds",
        "circle/square-too": "a link to class folder square",
        "triangle/also-circle.png": "a link to an image of class folder circle: it counts there",  # its real class, not triangle
    }
    skipped = {os.path.relpath(f["path"], source): f["reason"] for f in summary["skipped_files"]}
    assert skipped.keys() == expected.keys()
    for name, words in expected.items():
        assert words in skipped[name]
        assert sum(str(source / name) + " (" in line for line in result.stderr.splitlines()) == 1, (name, result.stderr)


# ---- sizes bounded before anything is allocated ---------------------------------------------------------


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


def test_a_batch_beyond_memory_is_refused_with_the_backbones_own_image_size(domains, tmp_path):
    tiny = [a for a in TINY if a not in ("--image-size", "32")]
    result = cli("adapt", *domains, *tiny, "--batch-size", "100000000000", "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "the backbone's input size 160x160 with --batch-size 100000000000 needs at least")
    assert not (tmp_path / "run").exists()
    # --print-config only writes the config down: it may be meant for a larger machine
    printed = cli("adapt", *domains, *tiny, "--batch-size", "100000000000", "--print-config")
    assert printed.exit_code == 0 and "batch-size: 100000000000" in printed.stdout and "image-size: 160" in printed.stdout


@pytest.mark.parametrize("changes,words", [
    ({"input_size": json.dumps([3, 8192, 8192])}, "says its input is 3x8192x8192 in its metadata and its graph takes 3x32x32"),
    ({"crop_pct": "0.000001"}, "bad crop_pct in its golabels metadata (must be in [0.25, 1]"),
], ids=["input-size", "crop-pct"])
def test_onnx_sizes_are_checked_against_the_graph_before_any_image(shipped, domains, tmp_path, changes, words):
    path = onnx_with_metadata(shipped / "model.onnx", tmp_path / "edited.onnx", **changes)
    result = cli_subprocess("predict", path, domains[1], timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    one_error_line(result, words)


# ---- numbers and files at the edges ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["adapt", "demo"])
def test_a_seed_beyond_the_generators_range_is_refused(domains, tmp_path, command):
    args = ["adapt", *domains, *TINY] if command == "adapt" else ["demo"]
    result = cli(*args, "--seed", str(2**63), "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "--seed", "4294967295")
    assert not (tmp_path / "run").exists()


def _pickled(path: Path) -> Path:
    import torch

    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a module: Python objects, not a state dict
    return path


@pytest.mark.parametrize("kind,words", [
    ("pickle", "holds pickled Python objects"),
    ("device", "/dev/zero is a device, not a regular file"),
    ("fifo", "is a FIFO, not a regular file"),
])
def test_weights_that_are_not_a_state_dict_are_one_line(domains, tmp_path, kind, words):
    weights = {"pickle": lambda: _pickled(tmp_path / "model.pth"), "device": lambda: Path("/dev/zero"),
               "fifo": lambda: (os.mkfifo(tmp_path / "w.pth"), tmp_path / "w.pth")[1]}[kind]()
    before = tree(tmp_path)
    result = cli_subprocess("adapt", *domains, *TINY, "--weights", weights, "--out", tmp_path / "run", timeout=120)
    assert result.returncode == 2
    one_error_line(result, words)
    assert "Warning" not in result.stderr  # torch's advice on unpickling is not for golabels' users
    if kind != "pickle":  # only reading it tells a pickle; a FIFO or a device is refused before the folders are scanned
        assert "source:" not in result.stderr
    assert tree(tmp_path) == before


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


def test_a_config_file_that_is_a_fifo_is_never_read(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")
    before = tree(tmp_path)
    result = cli_subprocess("adapt", "--config", tmp_path / "config.yaml", "--out", tmp_path / "run", timeout=60)
    assert result.returncode == 2
    one_error_line(result, "config.yaml is not a regular file")
    assert tree(tmp_path) == before
