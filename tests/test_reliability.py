"""Interrupt, resume, divergence, damaged files and full disks: nothing a user has is lost (issue 4)."""

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, interrupt_at, read_jsonl

# Long enough to interrupt midway; log and save often so the state moves in small steps.
RUN = [*TINY, "--iters", "60", "--log-every", "3", "--save-every", "10"]


def same_weights(run_a: Path, run_b: Path) -> bool:
    a, b = load_file(str(run_a / "model.safetensors")), load_file(str(run_b / "model.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_iteration(run: Path) -> int:
    from golabels_cli.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint.pt")["loop"]["iteration"]


def wait_for_row(metrics: Path, iteration: int, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before iteration {iteration}: {process.stderr.read()}")
        if metrics.is_file() and any(r["iter"] >= iteration for r in read_jsonl_safe(metrics)):
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def read_jsonl_safe(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def test_sampler_resumes_the_exact_sequence():
    from golabels_cli.data import InfiniteDraws

    full = [(d.index, d.seed) for d in itertools.islice(iter(InfiniteDraws(7, 3, 1)), 40)]
    assert len({s for _, s in full}) == 40
    for start in (1, 6, 7, 8, 13, 14, 20, 39):
        assert [(d.index, d.seed) for d in itertools.islice(iter(InfiniteDraws(7, 3, 1, start)), 40 - start)] == full[start:]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_ctrl_c_midway_then_resume_equals_an_uninterrupted_run(domains, tmp_path, workers):
    source, target = domains
    full = adapt_tiny(source, target, tmp_path / "full", *RUN, "--workers", workers)
    interrupted = tmp_path / "interrupted"
    # A terminal's Ctrl-C reaches the whole process group, loader workers included.
    process = subprocess.Popen(
        [sys.executable, "-m", "golabels_cli", "adapt", source, target, *RUN, "--workers", workers, "--out", interrupted],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    wait_for_row(interrupted / "metrics.jsonl", 25, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    assert f"golabels adapt --resume {interrupted}" in stderr and "Traceback" not in stderr
    # answered at once, before the step in progress ends (issue 45 item 4)
    assert "warning: Ctrl-C: stopping after the step in progress, then saving the training state; Ctrl-C again stops at once" in stderr
    stopped_at = checkpoint_iteration(interrupted)
    assert 25 <= stopped_at < 60 and not (interrupted / "model.safetensors").exists()

    resumed = cli("adapt", "--resume", interrupted, "--json", "--workers", workers)
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["iters"] == 60
    assert same_weights(full, interrupted)
    assert (full / "metrics.jsonl").read_text() == (interrupted / "metrics.jsonl").read_text()
    assert checkpoint_iteration(interrupted) == 60


def test_sigterm_saves_and_exits_130(domains, tmp_path):
    source, target = domains
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "golabels_cli", "adapt", source, target, *RUN, "--out", out],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_row(out / "metrics.jsonl", 6, process)
    process.terminate()
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130 and "terminated at iteration" in stderr
    assert "warning: SIGTERM: stopping after the step in progress" in stderr
    assert checkpoint_iteration(out) >= 6


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(domains, tmp_path):
    """The process dies halfway through writing its second checkpoint (fault injected into the writer)."""
    source, target = domains
    out = tmp_path / "run"
    crash = (
        "import os, sys, torch\n"
        "import golabels_cli.checkpoint as checkpoint\n"
        "real_save, calls = torch.save, []\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        open(f, 'wb').write(b'half a checkpoint')\n"
        "        os._exit(9)\n"
        "    real_save(obj, f, *a, **k)\n"
        "checkpoint.torch.save = dying_save\n"
        "from golabels_cli.cli import main\n"
        "sys.argv = ['golabels'] + sys.argv[1:]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", crash, "adapt", source, target, *RUN, "--out", out, "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 9
    assert checkpoint_iteration(out) == 10  # the first save, intact; the second never replaced it
    assert list(out.glob(".checkpoint.pt.*.tmp"))  # what the dying write left behind
    resumed = cli("adapt", "--resume", out, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert not list(out.glob(".*.tmp")) and checkpoint_iteration(out) == 60
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iter"] for r in rows] == list(range(3, 61, 3))  # rows logged after the checkpoint are not doubled


def test_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(domains, tmp_path, monkeypatch):
    from golabels_cli.methods import objective

    real, calls = objective.adversarial_loss, []

    def breaks_at_25(*args, **kwargs):
        calls.append(1)
        loss, extra, stats = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) >= 25 else loss), extra, stats

    monkeypatch.setattr(objective, "adversarial_loss", breaks_at_25)
    source, target = domains
    out = tmp_path / "run"
    result = cli("adapt", source, target, *RUN, "--log-every", "4", "--out", out, "--quiet")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "training diverged at iteration 25: loss_adv = nan" in line and "checkpoint of iteration 20 is kept" in line
    assert checkpoint_iteration(out) == 20
    assert not (out / "model.safetensors").exists()
    from golabels_cli.checkpoint import load_checkpoint

    state = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_full_disk_while_saving_keeps_the_previous_checkpoint(domains, tmp_path, monkeypatch):
    import golabels_cli.checkpoint as checkpoint

    real, calls = torch.save, []

    def disk_full_on_second(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full_on_second)
    source, target = domains
    out = tmp_path / "run"
    result = cli("adapt", source, target, *RUN, "--out", out, "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr and "checkpoint of iteration 10 is kept" in result.stderr
    assert checkpoint_iteration(out) == 10 and not list(out.glob(".*.tmp"))


def test_unwritable_output_folder_is_a_clear_error(domains, tmp_path):
    source, target = domains
    (tmp_path / "a-file").write_text("x")
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--out", tmp_path / "a-file" / "run")
    assert result.exit_code == 2 and "cannot create the run directory" in result.stderr
    assert result.stderr.count("\n") == 1


def test_resume_refuses_what_it_cannot_do(domains, tmp_path):
    source, target = domains
    done = adapt_tiny(source, target, tmp_path / "done", "--iters", "4")
    for args, words in (
        ((tmp_path / "missing",), "does not exist"),
        ((tmp_path,), "holds no checkpoint.pt"),
        ((done,), "already complete"),
        ((done, "--lr", "0.5"), "--lr can't be given with --resume"),
        ((done, source), "SOURCE can't be given with --resume"),
    ):
        result = cli("adapt", "--resume", *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert words in result.stderr and result.stderr.count("\n") == 1


def test_damaged_or_malicious_checkpoints_are_refused(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "12", "--save-every", "5")
    # A truncated checkpoint: a clear error, never a traceback.
    good = (run / "checkpoint.pt").read_bytes()
    (run / "summary.json").unlink()
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 3])
    result = cli("adapt", "--resume", run)
    assert result.exit_code == 2 and "cannot load checkpoint" in result.stderr and result.stderr.count("\n") == 1

    # A pickle whose __reduce__ would run a command: refused without running it.
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"format": "golabels-checkpoint/1", "model": Evil()}, run / "checkpoint.pt")
    result = cli("adapt", "--resume", run)
    assert result.exit_code == 2 and "holds pickled Python objects, which golabels never unpickles" in result.stderr
    assert not (tmp_path / "pwned").exists()


def make_hostile_folder(root: Path, good_a: list[Path], good_b: list[Path]) -> tuple[set[str], int]:
    """A labeled folder with every kind of file found in the wild; returns (bad paths, good count)."""
    import io
    import shutil

    from PIL import Image

    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    for i, path in enumerate(good_a):
        shutil.copy(path, a / f"good{i}.png")
    for i, path in enumerate(good_b):
        shutil.copy(path, b / f"good{i}.png")
    bad = set()
    buffer = io.BytesIO()
    Image.open(good_a[0]).convert("RGB").resize((64, 64)).save(buffer, "JPEG")
    (a / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (a / "zero.png").write_bytes(b"")
    (a / "text.jpg").write_text("I am a text file named like a photo\n")
    os.symlink(root / "nowhere.png", a / "broken.png")
    os.symlink(a, a / "loop")  # a folder link back to its parent
    bad |= {str(a / n) for n in ("truncated.jpg", "zero.png", "text.jpg", "broken.png", "loop")}
    rgba = Image.new("RGBA", (32, 32), (200, 10, 10, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(a / "rgba.png")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    palette.save(a / "palette.png", transparency=0)
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(a / "gray16.png")
    Image.new("CMYK", (32, 32), (0, 200, 200, 0)).save(a / "cmyk.jpg")
    rotated = Image.new("RGB", (40, 30), (10, 120, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(a / "exif.jpg", exif=exif.tobytes())
    os.symlink(a / "good0.png", a / "link.png")
    shutil.copy(good_a[1], os.fsencode(a) + b"/caf\xe9.png")  # not valid UTF-8
    secret = a / "secret.png"
    shutil.copy(good_a[2], secret)
    secret.chmod(0)
    if not os.access(secret, os.R_OK):  # root reads it anyway; then it is a good image
        bad.add(str(secret))
    Image.new("L", (10000, 10000), 128).save(b / "huge.jpg", quality=30)
    good = len(good_a) + len(good_b) + 8 + (str(secret) not in bad)
    return bad, good


def test_hostile_folder_through_adapt_eval_and_predict(domains, tmp_path):
    source, target = domains
    hostile = tmp_path / "hostile"
    bad, good = make_hostile_folder(hostile, sorted((source / "circle").iterdir())[:6], sorted((source / "square").iterdir())[:6])
    # link.png is a second name of good0.png: a scan (adapt, eval) counts the image once, predict predicts each name given
    twice = str(hostile / "a" / "link.png")
    scanned, skipped = good - 1, bad | {twice}
    bad_names = {Path(p).name for p in skipped}

    def reported_once(stderr):
        for name in bad_names:
            assert stderr.count(f"/{name} ") + stderr.count(f"/{name}\n") == 1, (name, stderr)

    run = tmp_path / "run"
    result = cli("adapt", hostile, target, *TINY, "--iters", "4", "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"]["source"] + summary["images"]["source_val"] == summary["data"]["source_images"] == scanned
    assert summary["skipped"] == {"source": len(skipped), "target": 0, "eval": 0}
    assert {f["path"] for f in summary["skipped_files"]} == skipped
    assert json.loads((run / "summary.json").read_text())["skipped"]["source"] == len(skipped)
    reported_once(result.stderr)

    result = cli("eval", run, hostile, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == scanned and report["skipped"] == len(skipped)
    reported_once(result.stderr)
    bad_names.discard("link.png")

    result = subprocess.run([sys.executable, "-m", "golabels_cli", "predict", str(run), str(hostile), "--device", "cpu"],
                            capture_output=True, timeout=300)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1 and "Traceback" not in stderr
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == good
    images_not_folders = bad_names - {"loop"}  # predict reads files; the looping folder is simply not entered twice
    assert f"{len(images_not_folders)} of {good + len(images_not_folders)} inputs could not be read" in stderr
    for name in images_not_folders:
        assert stderr.count(f"/{name} ") == 1, (name, stderr)


@pytest.mark.parametrize("before_base_lr", [False, True])
def test_resume_finishes_a_run_whose_final_writes_failed(domains, tmp_path, before_base_lr):
    """... also from a checkpoint written before the optimizer groups carried base_lr."""
    from golabels_cli.checkpoint import load_checkpoint
    from golabels_cli.files import torch_save_atomic

    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "6")
    weights = load_file(str(run / "model.safetensors"))
    (run / "model.safetensors").unlink()
    (run / "summary.json").unlink()
    if before_base_lr:
        ckpt = load_checkpoint(run / "checkpoint.pt")
        for group in ckpt["optimizer"]["param_groups"]:
            del group["base_lr"]
        torch_save_atomic(ckpt, run / "checkpoint.pt")
    result = cli("adapt", "--resume", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["iters"] == 6
    again = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)



def test_a_signal_before_the_first_step_is_not_lost(domains, tmp_path):
    """Issue 43: SIGTERM while the folders are read stops at once, writing nothing; one while the
    loaders start (after the run directory exists) stops the run after its first step, resumable."""
    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted
    from golabels_cli.progress import DataRead, RunStarted

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 6})

    def signal_on(kind):
        def listener(event):
            if isinstance(event, kind):
                os.kill(os.getpid(), signal.SIGTERM)
        return listener

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        training.adapt(cfg, out=tmp_path / "early", progress=signal_on(DataRead))
    assert stopped.value.message == "terminated before training began; nothing was written" and not (tmp_path / "early").exists()
    with pytest.raises(Interrupted) as stopped:
        training.adapt(cfg, out=tmp_path / "starting", progress=signal_on(RunStarted))
    assert "terminated at iteration 1 of 6" in stopped.value.message and checkpoint_iteration(tmp_path / "starting") == 1
    assert signal.getsignal(signal.SIGTERM) == previous
    assert training.resume(tmp_path / "starting")["iters"] == 6


def test_a_second_ctrl_c_stops_within_a_second_even_inside_a_long_computation(domains, tmp_path):
    """Issue 45 item 4: Python runs its signal handlers only between bytecodes, so a second Ctrl-C
    during one long C-level computation (a CPU step of a large backbone) used to wait for it. Here a
    step runs a 30-second matrix power; the second Ctrl-C must end the process within a few seconds,
    with one line and the newest checkpoint intact."""
    source, target = domains
    out = tmp_path / "run"
    slow = (
        "import sys, torch\n"
        "from golabels_cli.training import loop\n"
        "real = loop.Step.__call__\n"
        "calls = []\n"
        "def slow_step(t, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 5:\n"
        "        print('long computation', file=sys.stderr, flush=True)\n"
        "        torch.linalg.matrix_power(torch.randn(2000, 2000), 2**62 - 1)  # a minute in one C call\n"
        "    return real(t, *a, **k)\n"
        "loop.Step.__call__ = slow_step\n"
        "from golabels_cli.cli import main\n"
        "sys.argv = ['golabels'] + sys.argv[1:]\n"
        "main()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", slow, "adapt", str(source), str(target), *RUN, "--save-every", "2", "--out",
                                str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # into the long computation of step 5 (the checkpoint of iteration 4 is written)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - started < 5, stderr
    assert process.returncode == 130, stderr
    assert "Ctrl-C: stopping after the step in progress" in stderr and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: stopped at once during a long computation; the checkpoint of iteration 4 is kept — "
                      f"resume with: golabels adapt --resume {out}"], stderr
    assert checkpoint_iteration(out) == 4
    assert cli("adapt", "--resume", out, "--json").exit_code == 0


def test_a_stopped_run_can_be_evaluated_and_exported_from_its_checkpoint(domains, tmp_path):
    """Issue 45 item 4: eval, export and predict take a run that stopped before its end (a
    checkpoint, no model.safetensors), saying which iteration's weights they use; resuming it later
    still finishes it."""
    from golabels_cli import training
    from golabels_cli.config import build_config
    from golabels_cli.errors import Interrupted

    source, target = domains
    cfg = build_config({"source": str(source), "target": str(target), "backbone": "test_resnet", "pretrained": False, "image_size": 32,
                        "device": "cpu", "workers": 0, "batch_size": 4, "iters": 8})

    interrupt = interrupt_at(3)

    run = tmp_path / "cut"
    with pytest.raises(Interrupted):
        training.adapt(cfg, out=run, progress=interrupt)
    assert not (run / "model.safetensors").exists()
    evaluated = subprocess.run([sys.executable, "-m", "golabels_cli", "eval", str(run), str(target), "--device", "cpu", "--workers", "0",
                                "--json"], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    expected = f"warning: {run} holds no model.safetensors: the run stopped at iteration 3 of 8; using the weights of iteration 3"
    assert expected in evaluated.stderr
    assert json.loads(evaluated.stdout)["images"] == 24
    exported = cli("export", run, "--onnx", "--output", tmp_path / "cut.onnx", "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["max_abs_diff"] <= 1e-4
    # the checkpoint's weights are those that were saved: the same predictions as a model built from it
    from golabels_cli.checkpoint import load_checkpoint, load_model

    model, info = load_model(run)
    assert info.classes == ["circle", "square", "triangle"]
    saved = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert cli("adapt", "--resume", run, "--json").exit_code == 0 and (run / "model.safetensors").exists()
