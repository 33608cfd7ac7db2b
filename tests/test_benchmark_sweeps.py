"""The sweeps of benchmarks/ under signals: SIGTERM stops a sweep with its running cell resumable,
at any point of a cell (its folders read, its final writes), in the Python sweeps and the shell ones."""

import os
import subprocess
import sys

import pytest
from conftest import BENCHMARKS, load_benchmark

from golabels_cli.synthetic import make_two_domains


@pytest.mark.slow
def test_a_sweep_stops_on_sigterm_with_the_running_cell_resumable(tmp_path):
    import signal
    import time

    make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    args = [sys.executable, str(BENCHMARKS / "uda.py"), "--root", str(tmp_path / "data"), "--tasks", "source:target",
            "--methods", "source-only,dann", "--domain-labels", "fixed", "--seeds", "2", "--out", str(tmp_path / "sweep"),
            "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--iters", "150",
            "--batch-size", "4", "--device", "cpu", "--workers", "0", "--set", "save-every=50"]
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "sweep").rglob("checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 30  # after the running step, not after the sweep
    lines = [line for line in stderr.splitlines() if line.startswith("uda.py: stopped by SIGTERM")]
    assert len(lines) == 1 and "run the same command again to resume the sweep" in lines[0] and "Traceback" not in stderr, stderr
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) < 4
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) == 4


def test_a_signal_during_a_cells_final_writes_stops_the_sweep_after_it(tmp_path, monkeypatch, capsys):
    import signal

    from golabels_cli.training import loop

    uda = load_benchmark("uda")
    make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    real, calls = loop.finish, []

    def finish_while_signalled(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by golabels' final-writes handler, and passed on to the sweep's
        return real(*a, **k)

    monkeypatch.setattr(loop, "finish", finish_while_signalled)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        uda.main(["--root", str(tmp_path / "data"), "--tasks", "source:target", "--methods", "source-only,dann", "--domain-labels",
                  "fixed", "--seeds", "2", "--out", str(tmp_path / "sweep"), "--backbone", "test_resnet", "--no-pretrained",
                  "--image-size", "32", "--iters", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet"])
    assert stopped.value.code == 130
    assert "stopped by SIGTERM after 1 cells; no new cell started" in capsys.readouterr().err
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) == 1  # the cell finished its writes; none started after it
    assert signal.getsignal(signal.SIGTERM) == previous  # the sweep's handler is put back


def test_a_signal_while_a_cell_reads_its_folders_stops_the_sweep_at_once(tmp_path, monkeypatch, capsys):
    """Issue 43: a signal outside a cell's training loop (here while it checks its images) is not
    lost: the sweep stops before the cell trains, and the rerun does the whole sweep."""
    import signal

    from golabels_cli import data

    uda = load_benchmark("uda")
    make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    real, calls = data._keep_readable, []

    def signalled_while_reading(*a, **k):
        if list((tmp_path / "sweep").rglob("summary.json")) and not calls:  # the second cell's first folder
            calls.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(data, "_keep_readable", signalled_while_reading)
    args = ["--root", str(tmp_path / "data"), "--tasks", "source:target", "--methods", "source-only", "--seeds", "3", "--out",
            str(tmp_path / "sweep"), "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--iters", "2",
            "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet"]
    with pytest.raises(SystemExit) as stopped:
        uda.main(args)
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "uda.py: stopped by SIGTERM during cell" in err and "nothing was written" in err and "Traceback" not in err
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) == 1 and len(list((tmp_path / "sweep").iterdir())) >= 1
    monkeypatch.setattr(data, "_keep_readable", real)
    uda.main(args)
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("script", ["fine_tuning.sh", "gpu_sweeps.sh"])
def test_a_sweep_script_stops_on_sigterm_and_resumes(tmp_path, script):
    """Issue 43: SIGTERM to a sweep script stops its uda.py sweeps after their running cells save
    their state, with one line saying how to resume, exit 130; the same command then finishes."""
    import signal
    import subprocess
    import time

    make_two_domains(tmp_path / "data", per_class=4, size=32, seed=5)
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "WEIGHTS": "none", "SEEDS": "1"}
    if script == "fine_tuning.sh":
        env.update({"ROOT": str(tmp_path / "data"), "OUT": str(tmp_path / "runs"), "TASKS": "source:target", "BACKBONE": "test_resnet",
                    "SIZE": "32", "ITERS": "150", "WORKERS": "0", "BATCH": "4", "RECIPES": "frozen,batch-bn"})
    else:
        import shutil

        for root, (a, b) in {"office": ("amazon", "webcam"), "digits": ("mnist", "usps")}.items():
            shutil.copytree(tmp_path / "data" / "source", tmp_path / root / a)
            shutil.copytree(tmp_path / "data" / "target", tmp_path / root / b)
        env.update({"OFFICE_ITERS": "150", "DIGITS_ITERS": "2", "OFFICE_PROCS": "1", "OFFICE_WORKERS": "0", "DIGITS_PROCS": "1",
                    "DEADLINE": "600", "OFFICE_BACKBONE": "test_resnet", "DIGITS_BACKBONE": "test_resnet", "OFFICE_SIZE": "32",
                    "DIGITS_METHODS": "source-only", "OFFICE": str(tmp_path / "office"), "DIGITS": str(tmp_path / "digits"),
                    "RUNS": str(tmp_path / "runs")})
    process = subprocess.Popen(["bash", str(BENCHMARKS / script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").rglob("metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 60
    assert f"{script}: stopped by SIGTERM; the running cell" in stderr and "run the same command again to resume" in stderr
    finished = len(list((tmp_path / "runs").rglob("summary.json")))
    time.sleep(2)
    assert len(list((tmp_path / "runs").rglob("summary.json"))) == finished  # nothing goes on in the background
    assert list((tmp_path / "runs").rglob("checkpoint.pt"))
    if script == "fine_tuning.sh":  # (gpu_sweeps.sh's own test runs it whole; its sweeps are uda.py's, resumable as above)
        again = subprocess.run(["bash", str(BENCHMARKS / script)], env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout + again.stderr
