"""Files are never half-written and never overwritten (issue 26): two processes racing for one run
directory, a full disk, a failed write, the umask, and the temporaries a killed writer leaves."""

import multiprocessing
import os
import stat
import subprocess
import sys

import pytest
from conftest import TINY, cli, one_error_line

from golabels_cli.errors import InputError
from golabels_cli.files import atomic_path, claim_run_dir, write_text_atomic


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
