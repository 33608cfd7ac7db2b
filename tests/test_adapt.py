import json
import os
import random
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY, adapt_tiny, cli, read_jsonl
from golabels_cli.domain_labels import MODES
from golabels_cli.methods import METHODS

ROW_KEYS = {"iter", "loss_cls", "loss_adv", "disc_acc", "relabeled_src", "relabeled_tgt", "lr", "lambda", "adv_grad_norm"}


def weights(run):
    return load_file(str(Path(run) / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), f"{k} differs"


def test_run_directory_layout(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "30", "--eval-dir", target, "--eval-every", "10")
    assert {p.name for p in run.iterdir()} == {"config.yaml", "model.safetensors", "checkpoint.pt", "metrics.jsonl", "summary.json",
                                               "results.png", "results.csv", "target-mosaic.png"}
    rows = read_jsonl(run / "metrics.jsonl")
    # results.csv: metrics.jsonl as a table, read back by the standard parser
    import csv

    with open(run / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["iter"]) for r in table] == [10, 20, 30] and float(table[-1]["loss_cls"]) == rows[-1]["loss_cls"]
    from PIL import Image

    with Image.open(run / "target-mosaic.png") as mosaic:
        assert mosaic.width > 200 and mosaic.height > 200
    assert rows[-1]["iter"] == 30 and [r["iter"] for r in rows] == [10, 20, 30]
    for row in rows:
        assert ROW_KEYS <= row.keys()
        assert 0 <= row["disc_acc"] <= 1 and 0 <= row["relabeled_src"] <= 1
        assert "target_acc" in row
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["circle", "square", "triangle"] and summary["iters"] == 30
    assert summary["method"] == "cdan-e" and summary["domain_labels"] == "fixed"
    assert 0 <= summary["target_acc"] <= 1 and len(summary["evals"]) == 3
    # What decides the numbers besides the config: the installed libraries by their real versions, the hardware.
    env = summary["environment"]
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0] and env["timm"] == timm.__version__
    assert env["cpu_kernels"] == torch.backends.cpu.get_cpu_capability() and env["gpu"] is None
    assert {"python", "torchvision", "numpy", "pillow", "cpu"} <= env.keys()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["backbone"] == "test_resnet" and config["iters"] == 30 and config["source"] == str(source)
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("method", [m for m in METHODS if m != "source-only"])
@pytest.mark.parametrize("mode", MODES)
def test_every_method_and_mode_runs(domains, tmp_path, method, mode):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "3", "--log-every", "1", "--method", method, "--domain-labels", mode)
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 3 and all(r["loss_adv"] > 0 for r in rows)
    if mode == "fixed":
        assert all(r["relabeled_src"] == 0 and r["relabeled_tgt"] == 0 for r in rows)
    # GVB's bridge penalties and ASAN's spectral loss are logged; the other methods have none.
    assert all((r["loss_extra"] is not None and r["loss_extra"] > 0) == (method in ("gvb", "asan")) for r in rows)
    # The shipped model loads and predicts whatever the method added to the head.
    assert cli("eval", run, target, "--device", "cpu").exit_code == 0


def test_source_only_runs(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "3", "--method", "source-only")
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert row["loss_adv"] == 0 and row["disc_acc"] is None and ROW_KEYS <= row.keys()


def test_same_seed_same_weights_and_config_replay(domains, tmp_path):
    source, target = domains
    a = adapt_tiny(source, target, tmp_path / "a", "--iters", "8", "--seed", "3")
    b = adapt_tiny(source, target, tmp_path / "b", "--iters", "8", "--seed", "3")
    assert_same_weights(a, b)
    replay = cli("adapt", "--config", a / "config.yaml", "--out", tmp_path / "replay", "--quiet")
    assert replay.exit_code == 0, replay.stderr
    assert_same_weights(a, tmp_path / "replay")
    c = adapt_tiny(source, target, tmp_path / "c", "--iters", "8", "--seed", "4")
    assert any((weights(a)[k] != weights(c)[k]).any() for k in weights(a))


def test_config_file_values_and_flags_win(domains, tmp_path):
    source, target = domains
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"source": str(source), "target": str(target), "backbone": "test_resnet",
                                   "pretrained": False, "image-size": 32, "iters": 5, "batch_size": 4,
                                   "method": "dann", "workers": 0, "device": "cpu"}))
    result = cli("adapt", "--config", cfg, "--iters", "4", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.stderr
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["iters"] == 4 and written["method"] == "dann" and written["batch-size"] == 4


def test_target_folder_layout_never_reaches_training(domains, tmp_path):
    source, target = domains
    files = sorted(target.rglob("*.png"))
    variants = {}
    renamed = tmp_path / "renamed"
    for f in files:
        dest = renamed / ("class_" + f.parent.name[::-1]) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    variants["renamed"] = renamed
    shuffled = tmp_path / "shuffled"
    rng = random.Random(0)
    for f in files:
        dest = shuffled / rng.choice(["a", "b", "c", "d/e"]) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    variants["shuffled"] = shuffled
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in files:
        shutil.copy(f, flat / f.name)
    variants["flat"] = flat
    reference = adapt_tiny(source, target, tmp_path / "ref", "--iters", "6", "--method", "cdan-e")
    for name, folder in variants.items():
        run = adapt_tiny(source, folder, tmp_path / f"run-{name}", "--iters", "6", "--method", "cdan-e")
        assert_same_weights(reference, run)


def test_default_run_names_increment(domains, tmp_path):
    source, target = domains
    for _ in range(2):
        result = cli("adapt", source, target, *TINY, "--iters", "2", "--quiet", cwd=tmp_path)
        assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "adapt").iterdir()) == ["exp", "exp2"]


def test_existing_out_is_refused_unless_exist_ok(domains, tmp_path):
    source, target = domains
    run = adapt_tiny(source, target, tmp_path / "run", "--iters", "2")
    before = (run / "model.safetensors").read_bytes()
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--out", run, "--seed", "9")
    assert result.exit_code == 2 and "already exists" in result.stderr and "--exist-ok" in result.stderr
    assert (run / "model.safetensors").read_bytes() == before
    result = cli("adapt", source, target, *TINY, "--iters", "2", "--out", run, "--seed", "9", "--exist-ok", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (run / "model.safetensors").read_bytes() != before


def test_json_output_is_one_document(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--iters", "3", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["run_dir"] == str(tmp_path / "run") and summary["iters"] == 3


def test_plain_progress_lines_without_tty(domains, tmp_path):
    source, target = domains
    result = cli("adapt", source, target, *TINY, "--iters", "4", "--log-every", "2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    last = [line for line in lines if line.startswith("iter 4/4")]
    assert last and "it/s" in last[0] and "eta" in last[0] and "cls" in last[0] and "adv" in last[0] and "disc" in last[0]
    assert "iter 4/4" not in result.stdout  # progress never pollutes stdout
    # the first iteration is reported at once (a heartbeat, before any metrics row), and the terms are explained once
    assert any(line.startswith("iter 1/4 ") for line in lines)
    legend = [line for line in lines if line.startswith("progress terms:")]
    assert len(legend) == 1 and "cls: classification loss" in legend[0] and "disc: its accuracy" in legend[0]
    # under fixed domain labels nothing is ever relabeled: the term is neither shown nor explained
    assert "relab" not in result.stderr


def test_progress_terms_follow_the_recipe(domains, tmp_path):
    source, target = domains
    go = cli("adapt", source, target, *TINY, "--iters", "2", "--domain-labels", "go", "--out", tmp_path / "go")
    assert go.exit_code == 0, go.stderr
    assert "relab s/t" in [line for line in go.stderr.splitlines() if line.startswith("iter 2/2")][0]
    mcc = cli("adapt", source, target, *TINY, "--iters", "2", "--method", "mcc", "--out", tmp_path / "mcc")
    assert mcc.exit_code == 0, mcc.stderr
    line = [line for line in mcc.stderr.splitlines() if line.startswith("iter 2/2")][0]
    assert "tgt-loss" in line and " adv " not in line and "disc" not in line and "lambda" not in line


def adapt_on_a_terminal(args: list, columns: int) -> tuple[int, str]:
    """`golabels adapt ARGS` with stderr on a pseudo-terminal `columns` wide: its exit code and
    what the terminal received."""
    import pty
    import subprocess
    import sys

    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "golabels_cli", "adapt", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=child, env={**os.environ, "COLUMNS": str(columns), "TERM": "xterm"})
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_rich_progress_bar_on_a_tty(domains, tmp_path):
    source, target = domains
    code, screen = adapt_on_a_terminal([source, target, *TINY, "--iters", "4", "--log-every", "2", "--out", tmp_path / "run"], 200)
    assert code == 0
    assert "it/s" in screen and "4/4" in screen and "disc" in screen and "progress terms:" in screen
    assert "━" in screen  # rich's bar


def test_fine_tuning_on_a_cpu_points_to_the_frozen_path_after_the_first_step(domains, tmp_path):
    """A new user's first command on a CPU: told how long it will take, and what --freeze-backbone
    would take, after the first iteration, before a minute has gone; Ctrl-C then saves the state."""
    import signal
    import subprocess
    import sys

    source, target = domains
    # At 64 px the backbone's step outweighs the head's by far more than the search's cost (the hint's
    # threshold is HINT_RATIO x SEARCH_COST head steps): at 32 px test_resnet sat at that edge.
    tiny = [*pretrained_tiny(tmp_path)]
    tiny[tiny.index("--image-size") + 1] = "64"
    proc = subprocess.Popen([sys.executable, "-m", "golabels_cli", "adapt", source, target, *tiny, "--iters", "200000",
                             "--out", tmp_path / "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = []
    import time

    deadline = time.monotonic() + 240  # the heartbeat lines would otherwise keep a run with no hint going for hours
    try:
        while not seen or "--freeze-backbone would take about" not in seen[-1]:
            assert time.monotonic() < deadline, "no hint in 4 minutes: " + "".join(seen[-5:])
            seen.append(lines.get(timeout=180))  # queue.Empty, not a hang, when no hint comes
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    hint = seen[-1]
    assert any(line.startswith("iter 1/200000 ") for line in seen)  # piped: a heartbeat from the first iteration on
    assert "this run fine-tunes the whole backbone on a CPU: its 199999 iterations left will take about" in hint, "".join(seen)
    assert "press Ctrl-C and start a new run with --freeze-backbone added" in hint  # resume keeps the options: advice that works
    assert not any(line.startswith("iter 2/") for line in seen)  # said after the first step
    assert proc.returncode == 130


def test_the_frozen_path_hint_changes_no_weight(domains, tmp_path, monkeypatch):
    from golabels_cli.training import path_hint

    source, target = domains
    monkeypatch.setattr(path_hint, "HINT_ABOVE_S", 0.0)
    monkeypatch.setattr(path_hint, "HINT_RATIO", 0.0)
    tiny = pretrained_tiny(tmp_path)
    hinted = cli("adapt", source, target, *tiny, "--iters", "3", "--out", tmp_path / "hinted")
    assert hinted.exit_code == 0 and "--freeze-backbone would take about" in hinted.stderr
    monkeypatch.setattr(path_hint, "HINT_ABOVE_S", float("inf"))
    plain = cli("adapt", source, target, *tiny, "--iters", "3", "--out", tmp_path / "plain")
    assert plain.exit_code == 0 and "--freeze-backbone would take" not in plain.stderr
    assert_same_weights(tmp_path / "hinted", tmp_path / "plain")
    # a backbone from random init has no features worth freezing: no hint, however slow the run
    monkeypatch.setattr(path_hint, "HINT_ABOVE_S", 0.0)
    scratch = cli("adapt", source, target, *TINY, "--iters", "2", "--out", tmp_path / "scratch")
    assert scratch.exit_code == 0 and "--freeze-backbone would take" not in scratch.stderr


def test_the_frozen_path_hint_counts_only_the_features_not_in_the_cache(domains, tmp_path, monkeypatch):
    from golabels_cli.training import path_hint

    source, target = domains
    monkeypatch.setattr(path_hint, "HINT_ABOVE_S", 0.0)
    monkeypatch.setattr(path_hint, "HINT_RATIO", 0.0)
    tiny = [*pretrained_tiny(tmp_path), "--cache-dir", tmp_path / "cache", "--iters", "2"]
    before = cli("adapt", source, target, *tiny, "--out", tmp_path / "before")
    assert before.exit_code == 0 and "(the features of 48 images once, about" in before.stderr, before.stderr
    frozen = cli("adapt", source, target, *tiny, "--freeze-backbone", "--method", "dann", "--out", tmp_path / "frozen")
    assert frozen.exit_code == 0, frozen.stderr
    after = cli("adapt", source, target, *tiny, "--out", tmp_path / "after")
    assert after.exit_code == 0 and "(the features are all in the cache, then 2 steps on them" in after.stderr, after.stderr


def pretrained_tiny(folder):
    """TINY with the backbone's weights from a local file: a "pretrained" backbone, as --weights makes one."""
    from safetensors.torch import save_file

    path = folder / "test_resnet.safetensors"
    if not path.exists():
        save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(path))
    return [*(a for a in TINY if a != "--no-pretrained"), "--weights", str(path)]


def test_evaluating_during_training_changes_no_weight(domains, tmp_path):
    """--eval-every's default now evaluates runs of 1000 iterations or more ten times: the evaluations
    (validators, --eval-dir, BatchNorm re-estimates) must leave the training exactly as without them."""
    source, target = domains
    often = adapt_tiny(source, target, tmp_path / "often", "--iters", "6", "--eval-every", "2", "--eval-dir", target)
    never = adapt_tiny(source, target, tmp_path / "never", "--iters", "6", "--eval-every", "0", "--eval-dir", target)
    assert_same_weights(often, never)
    assert [e["iter"] for e in json.loads((often / "summary.json").read_text())["evals"]] == [2, 4, 6]
    assert json.loads((often / "summary.json").read_text())["eval_seconds"] > 0


def test_a_terminal_wraps_the_data_report_between_words_and_logs_read_as_plain_lines(domains, tmp_path):
    import re

    source, target = domains
    code, raw = adapt_on_a_terminal([source, target, *TINY, "--iters", "2", "--out", tmp_path / "run"], 60)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r", "")
    assert code == 0
    piped = cli("adapt", source, target, *TINY, "--iters", "2", "--out", tmp_path / "piped").stderr
    report = next(line for line in piped.splitlines() if line.startswith("source: "))
    assert len(report) > 60
    start = screen.index("source: ")
    shown = screen[start:start + 3 * len(report)].split("target: ")[0]
    # golabels breaks the line itself, between words, at the terminal's width (a terminal left to
    # wrap a long line cuts words at its edge)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert len(lines) >= 2 and max(len(line) for line in lines) <= 60, lines
    assert set(shown.split()) <= set(report.split()), (shown, report)
    assert "INFO" not in screen and "WARNING" not in screen  # log lines read as the rest: plain, or "warning: ..."
