"""--threads: the frozen path measures the thread count of its steps, records it, and says so."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import TINY, cli, one_error_line
from golabels_cli.config import build_config
from golabels_cli.console import AdaptProgress
from golabels_cli.training.threads import candidates, fastest, measure, resolve_threads, step_threads


def _without_thread_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _torch_default_threads(env) -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env, capture_output=True, text=True)
    return int(out.stdout)


def test_the_frozen_path_measures_its_threads_logs_and_records_the_choice(domains, tmp_path):
    source, target = domains
    env = _without_thread_settings()
    if _torch_default_threads(env) < 2:
        pytest.skip("one core: nothing to choose")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", source, target, *TINY, "--freeze-backbone", "--method", "dann",
                             "--iters", "4", "--out", run], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("threads: ")]
    assert len(lines) == 1, result.stderr
    assert "for the training steps" in lines[0] and "(1 thread " in lines[0] and "--threads N sets it" in lines[0], result.stderr
    chosen = int(lines[0].split()[1])
    assert chosen >= 1
    assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == chosen
    assert yaml.safe_load((run / "summary.json").read_text())["threads"] == chosen


def test_a_count_given_or_set_in_the_environment_is_not_measured(domains, tmp_path):
    source, target = domains
    given = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "dann", "--iters", "2", "--threads", "1", "--out",
                tmp_path / "a")
    assert given.exit_code == 0, given.stderr
    assert "threads: " not in given.stderr
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["threads"] == 1
    # the tests set OMP_NUM_THREADS (conftest): the user's choice for the machine, recorded as torch's default
    by_env = cli("adapt", source, target, *TINY, "--freeze-backbone", "--method", "dann", "--iters", "2", "--out", tmp_path / "b")
    assert by_env.exit_code == 0 and "threads: " not in by_env.stderr
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["threads"] == 0
    assert yaml.safe_load((tmp_path / "b" / "summary.json").read_text())["threads"] == torch.get_num_threads()


def test_a_backbone_that_trains_on_a_cpu_is_measured_too(domains, tmp_path, monkeypatch):
    """Issue 55 item 1: fine-tuning kept torch's default, and the demo's small network on a loaded
    machine ran 5x slower on it than on one thread. The whole classifier's step is measured now."""
    source, target = domains
    env = _without_thread_settings()
    if _torch_default_threads(env) < 2:
        pytest.skip("one core: nothing to choose")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", source, target, *TINY, "--method", "dann", "--iters", "2",
                             "--out", run], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("threads: ")]
    assert "for the training steps (1 thread " in line, line
    assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == int(line.split()[1])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice: kept, not measured
    cfg = build_config({"source": "s", "target": "t", "freeze_backbone": False})
    assert resolve_threads(cfg, torch.device("cpu"), torch.nn.Linear(4, 3), None, (4,)) == 0
    frozen_on_gpu = build_config({"source": "s", "target": "t", "freeze_backbone": True})
    assert resolve_threads(frozen_on_gpu, torch.device("cuda"), torch.nn.Linear(4, 3), None, (4,)) == 0
    given = build_config({"source": "s", "target": "t", "freeze_backbone": True, "threads": 3})
    assert resolve_threads(given, torch.device("cpu"), torch.nn.Linear(4, 3), None, (4,)) == 3


def test_a_negative_count_is_one_error_line(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--threads", "-1", "--out", tmp_path / "run")
    assert result.exit_code == 2
    one_error_line(result, "--threads", "non-negative")
    assert not (tmp_path / "run").exists()


def test_the_fewest_threads_within_five_percent_of_the_fastest_win():
    assert fastest({1: 1.00, 2: 0.97}) == 1
    assert fastest({1: 1.00, 2: 0.50, 4: 0.49}) == 2
    assert fastest({1: 0.30, 2: 0.50}) == 1
    assert candidates(1) == [1] and candidates(2) == [1, 2] and candidates(6) == [1, 2, 4, 6] and candidates(8) == [1, 2, 4, 8]


def test_the_probe_measures_every_count_and_leaves_the_models_and_threads_as_they_were():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    disc = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    before = {k: v.clone() for k, v in [*head.state_dict().items(), *disc.state_dict().items()]}
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    timings = measure(head, disc, 8, 8, [1, 2])
    assert set(timings) == {1, 2} and all(0 < s < 1 for s in timings.values())
    after = {**head.state_dict(), **disc.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    with step_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_the_eta_follows_the_recent_rate_not_the_first_steps():
    progress = AdaptProgress(quiet=True)
    progress.total, progress.started, progress.first_iter = 10000, 0.0, 0
    now = 0.0
    for it in range(1, 11):  # ten slow first steps: 6 s each
        now += 6.0
        progress._speed(it, now)
    for it in range(11, 1011):  # then 10 iterations a second
        now += 0.1
        speed = progress._speed(it, now)
    assert speed == pytest.approx(10.0, rel=0.02)  # the session's mean would say 6.3
    assert progress._eta(1010, speed) == "15 min"


def test_a_search_measures_its_threads_once_and_resumes_with_them(domains, tmp_path):
    """Issue 55 item 2: each candidate measured again, so a resumed search chose 2 threads where the
    uninterrupted one chose 1 (the same accuracy, another model file). The first candidate's count
    goes into the search's config.yaml; the others, and a resume, use it and measure nothing."""
    from test_search import FROZEN

    source, target = domains
    env = _without_thread_settings()
    if _torch_default_threads(env) < 2:
        pytest.skip("one core: nothing to choose")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", source, target, *TINY, *FROZEN, "--method", "auto",
                             "--search-recipes", "mcc,bnm,source-only", "--search-pick", "ensemble", "--out", run],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    probes = [line for line in result.stderr.splitlines() if line.startswith("threads: ") and "for the training steps" in line]
    assert len(probes) == 1, result.stderr
    chosen = int(probes[0].split()[1])
    assert f"threads: {chosen} for the search's candidates, as mcc chose" in result.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == chosen
    assert {yaml.safe_load((run / "candidates" / r / "config.yaml").read_text())["threads"] for r in ("mcc", "bnm", "source-only")} == {
        chosen}
    import shutil

    for name in ("summary.json", "model.safetensors"):  # stopped before its last candidate
        (run / name).unlink()
    shutil.rmtree(run / "candidates" / "source-only")
    resumed = subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", "--resume", run], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "threads: " not in resumed.stderr  # nothing measured again
    assert yaml.safe_load((run / "candidates" / "source-only" / "config.yaml").read_text())["threads"] == chosen
