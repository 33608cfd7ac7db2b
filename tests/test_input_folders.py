"""What the image folders hold (issues 26, 35): FIFOs, links, a target inside the source, names that
break pipelines; every output reads back with the standard parsers whatever the names."""

import base64
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli


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


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_target_that_is_the_source_or_inside_it_is_warned_about(domains, tmp_path, where):
    source, _ = domains
    target = source if where == "same" else source / "circle"
    result = cli("adapt", source, target, *TINY, "--iters", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    expected = "the target folder is the source folder" if where == "same" else "the target folder overlaps the source folder"
    assert expected in result.stderr and "are also source images" in result.stderr


LATIN1 = b"caf\xe9"  # "café" as Latin-1: not valid UTF-8


def _run(*args, stdin=None):
    """golabels in a process, bytes in and out: what a pipeline reads."""
    return subprocess.run([sys.executable, "-m", "golabels_cli", *map(str, args)], input=stdin, capture_output=True, timeout=300)


def _strict_json(data: bytes):
    return json.loads(data.decode("utf-8"))  # strict: raises on bytes that are not UTF-8


def _from_base64(text: str) -> bytes:
    return base64.b64decode(text)


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

    # issue 54 item 15: model.onnx's metadata held the name as a lone surrogate (\\udce9), no text a strict reader takes
    import onnx

    assert _run("export", run, "--onnx", "--no-verify").returncode == 0
    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert _strict_json(meta["classes"].encode("utf-8"))[0] == "caf\\xe9" and "\\udc" not in meta["classes"]
    assert _from_base64(json.loads(meta["classes_base64"])[0]) == LATIN1
    from_onnx = _run("predict", run / "model.onnx", target, "--format", "jsonl")
    same = ("path", "path_base64", "label", "label_base64")  # the same labels and bytes; probabilities to onnxruntime's rounding
    assert [{k: row.get(k) for k in same} for row in map(_strict_json, from_onnx.stdout.splitlines())] == [
        {k: row.get(k) for k in same} for row in lines]


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
