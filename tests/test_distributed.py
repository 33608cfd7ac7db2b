"""Issue 6: data-parallel adaptation on torch.distributed (gloo on the CPU here)."""

import itertools
import json
import os
import time

import pytest
import torch

from conftest import TINY, cli, cli_subprocess, read_jsonl
from golabels_cli.data import InfiniteDraws
from golabels_cli.distributed import lr_factor
from golabels_cli.models import Classifier, create_backbone

RUN_FILES = {"config.yaml", "model.safetensors", "checkpoint.pt", "metrics.jsonl", "summary.json", "results.png", "results.csv",
             "target-mosaic.png"}


def test_ranks_never_draw_the_same_image_within_a_shuffle():
    n = 23
    for world in (2, 3, 4):
        share = n // world
        streams = [list(itertools.islice(iter(InfiniteDraws(n, seed=5, stream=0, rank=r, world=world)), 6 * share)) for r in range(world)]
        for shuffle in range(3):
            taken = [d.index for s in streams for d in s[shuffle * share:(shuffle + 1) * share]]
            assert len(taken) == len(set(taken)) == world * share  # disjoint over ranks
        seeds = [d.seed for s in streams for d in s]
        assert len(seeds) == len(set(seeds))  # every draw augments differently
        # a rank resumed at draw k continues its own sequence
        for r in range(world):
            resumed = list(itertools.islice(iter(InfiniteDraws(n, 5, 0, start=share + 2, rank=r, world=world)), 10))
            assert [(d.index, d.seed) for d in resumed] == [(d.index, d.seed) for d in streams[r][share + 2:share + 12]]
    # one process is the plain sampler: the whole shuffle
    single = [d.index for d in itertools.islice(iter(InfiniteDraws(n, 5, 0)), n)]
    assert sorted(single) == list(range(n))
    with pytest.raises(Exception, match="cannot be shared"):
        iter(InfiniteDraws(1, 0, 0, rank=0, world=2)).__next__()


def test_lr_scaling_rules_and_sync_bn_checkpoints_load_into_plain_batchnorm():
    assert (lr_factor("none", 4), lr_factor("linear", 4), lr_factor("sqrt", 4)) == (1.0, 4.0, 2.0)
    plain = Classifier(create_backbone("test_resnet", False, None), 3)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(Classifier(create_backbone("test_resnet", False, None), 3))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert plain.state_dict().keys() == synced.state_dict().keys()
    plain.load_state_dict(synced.state_dict())


def run_two(args, cwd, env=None, timeout=240):
    return cli_subprocess("adapt", *args, "--devices", "2", env=env, timeout=timeout, cwd=cwd)


def test_two_processes_train_together_and_only_rank_0_writes(domains, tmp_path):
    source, target = domains
    common = [source, target, *TINY, "--iters", "8", "--log-every", "4", "--lr-scaling", "linear"]
    single = cli("adapt", *common, "--out", tmp_path / "single", "--quiet")
    assert single.exit_code == 0, single.stderr
    result = run_two([*common, "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # one run directory, at the default place, written once
    assert [p.name for p in (tmp_path / "runs" / "adapt").iterdir()] == ["exp"]
    run = tmp_path / "runs" / "adapt" / "exp"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    summary = json.loads(result.stdout)  # exactly one JSON document: rank 0's
    assert summary["run_dir"] == "runs/adapt/exp" and summary["processes"] == 2 and summary["effective_batch"] == 8
    one, two = read_jsonl(tmp_path / "single" / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [r["iter"] for r in two] == [4, 8]
    assert [r["samples_per_step"] for r in one] == [8.0, 8.0]  # 4 source + 4 target images
    assert [r["samples_per_step"] for r in two] == [16.0, 16.0]  # ... on each of the two ranks
    assert two[0]["lr"] == pytest.approx(2 * one[0]["lr"])  # --lr-scaling linear
    assert result.stderr.count("run directory:") == 1  # only rank 0 shows progress


def python_hook(tmp_path, code):
    """PYTHONPATH for a sitecustomize.py that every Python process started with it runs first."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}


def on_rank_step(rank, step, action):
    """sitecustomize code: `action` runs in worker `rank` at its `step`-th optimizer step."""
    return (
        "import os\n"
        f"if os.environ.get('RANK') == '{rank}':\n"
        "    import signal, torch\n"
        "    step, calls = torch.optim.SGD.step, [0]\n"
        "    def hooked(self, *a, **k):\n"
        "        calls[0] += 1\n"
        f"        if calls[0] == {step}:\n"
        f"            {action}\n"
        "        return step(self, *a, **k)\n"
        "    torch.optim.SGD.step = hooked\n"
    )


def test_every_rank_balances_the_target_by_rank_0s_estimate(domains, tmp_path):
    """Each rank's BatchNorm statistics are its own: rank 0 estimates, the others receive it."""
    source, target = domains
    spy = (
        "import os, json\n"
        "if 'RANK' in os.environ:\n"
        "    from golabels_cli import data\n"
        "    real = data.BalancedDraws.__init__\n"
        "    def spy(self, labels, seed, stream, start=0, rank=0, world=1):\n"
        f"        with open(os.path.join({str(tmp_path)!r}, 'draws-' + os.environ['RANK']), 'a') as f:\n"
        "            f.write(json.dumps([stream, start, rank, list(labels)]) + '\\n')\n"
        "        real(self, labels, seed, stream, start, rank, world)\n"
        "    data.BalancedDraws.__init__ = spy\n"
    )
    result = run_two([source, target, *TINY, "--iters", "8", "--refresh-every", "3", "--no-balance-source", "--balance-target",
                      "--label-shift-weights", "--out", tmp_path / "run", "--json"], cwd=tmp_path, env=python_hook(tmp_path, spy))
    assert result.returncode == 0, result.stderr
    draws = {r: read_jsonl(tmp_path / f"draws-{r}") for r in (0, 1)}
    assert [(stream, start, rank) for stream, start, rank, _ in draws[0]] == [(1, 12, 0), (1, 24, 0)]
    assert [(stream, start, rank) for stream, start, rank, _ in draws[1]] == [(1, 12, 1), (1, 24, 1)]
    assert [labels for *_, labels in draws[0]] == [labels for *_, labels in draws[1]]
    estimate = json.loads(result.stdout)["target_estimate"]
    assert [draws[0][-1][3].count(c) for c in range(3)] == estimate["pseudo_label_counts"]


def test_checkpoint_of_two_processes_resumes_in_one_and_exports(domains, tmp_path):
    source, target = domains
    run = tmp_path / "run"
    # Ctrl-C reaches the launcher (rank 0's parent) at rank 0's 12th step: the agent passes it to
    # its workers, which finish the step, save and stop together.
    env = python_hook(tmp_path, on_rank_step(0, 12, "os.kill(os.getppid(), signal.SIGINT)"))
    result = run_two([source, target, *TINY, "--iters", "40", "--save-every", "5", "--out", run], cwd=tmp_path, env=env)
    assert result.returncode == 130, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the training state is saved" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (run / "model.safetensors").exists()
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=True)["loop"]["iteration"]
    assert 12 <= stopped_at < 40

    resumed = cli_subprocess("adapt", "--resume", run, "--devices", "1", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["processes"] == 1 and summary["iters"] == 40
    assert [r["iter"] for r in read_jsonl(run / "metrics.jsonl")][-1] == 40
    exported = cli("export", run, "--onnx")
    assert exported.exit_code == 0, exported.stderr
    assert (run / "model.onnx").is_file()


def test_a_crashing_rank_ends_the_whole_job_with_exit_1(domains, tmp_path):
    source, target = domains
    env = python_hook(tmp_path, on_rank_step(1, 5, "raise RuntimeError('injected failure')"))
    started = time.time()
    result = run_two([source, target, *TINY, "--iters", "500", "--out", tmp_path / "run"], cwd=tmp_path,
                     env=env, timeout=150)
    assert result.returncode == 1, result.stderr
    assert time.time() - started < 150
    assert "[rank 1] RuntimeError: injected failure" in result.stderr
    assert "worker processes failed" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bad_distributed_options_are_one_line_errors(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--devices", "0", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--devices must be a positive integer" in result.stderr
    result = cli("adapt", source, target, *TINY, "--lr-scaling", "cubic", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "unknown lr-scaling" in result.stderr
    # SyncBatchNorm has no CPU kernels: refused by every worker, reported once, nothing written
    result = run_two([source, target, *TINY, "--sync-bn", "--out", tmp_path / "c"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--sync-bn needs CUDA" in result.stderr, result.stderr
    assert not (tmp_path / "c").exists()
