"""The benchmark scripts' own logic on tiny data: the sweep's cells, resume and table; the toys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BENCHMARKS, load_benchmark
from golabels_cli.synthetic import make_two_domains

@pytest.mark.slow
def test_uda_sweep_runs_resumes_and_tabulates(tmp_path):
    uda = load_benchmark("uda")
    make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)  # domains "source" and "target"
    args = ["--root", str(tmp_path / "data"), "--tasks", "source:target,target:source", "--methods", "source-only,dann",
            "--domain-labels", "fixed,go", "--seeds", "2", "--out", str(tmp_path / "sweep"), "--backbone", "test_resnet",
            "--no-pretrained", "--image-size", "32", "--iters", "3", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet"]
    text = uda.main(args)
    rows = [line.split("|")[1:-1] for line in text.strip().splitlines()[2:]]
    assert len(rows) == 4  # 2 tasks x 2 methods
    header = [c.strip() for c in text.splitlines()[0].split("|")[1:-1]]
    assert header == ["task", "method", "fixed", "go", "go − fixed", "seeds", "wall"]
    for row in rows:
        cells = dict(zip(header, (c.strip() for c in row)))
        mean, std = (float(v) for v in cells["fixed"].split(" ± "))
        assert 0 <= mean <= 100 and std >= 0 and cells["seeds"] == "2"
        if cells["method"] == "dann":
            go = float(cells["go"].split(" ± ")[0])
            assert float(cells["go − fixed"]) == pytest.approx(go - mean, abs=0.011)
    summaries = sorted((tmp_path / "sweep").rglob("summary.json"))
    assert len(summaries) == 12  # 2 tasks x (source-only + dann x 2 modes) x 2 seeds
    # Resume: deleted results are redone and nothing else runs again.
    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    held = tmp_path / "sweep" / "source-target" / "dann-fixed" / "seed0" / "summary.json"
    victim = tmp_path / "sweep" / "target-source" / "dann-go" / "seed1" / "summary.json"
    held.unlink()
    victim.unlink()
    def without_wall(table):
        return [line.rsplit("|", 2)[0] for line in table.splitlines()]

    # A second sweep is running the earlier cell: this one does the later cell first, then waits for
    # the held one instead of deleting and redoing it.
    import fcntl
    import threading
    import time

    with open(held.parents[1] / ".seed0.lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        (held.parent / "checkpoint.pt").rename(held.parent / "held.pt")  # as if the other sweep had just started it
        waiting = threading.Thread(target=lambda: results.append(uda.main(args)))
        results = []
        waiting.start()
        deadline = time.monotonic() + 120
        while not victim.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert victim.exists()  # the cell after the busy one was not kept waiting
        time.sleep(1)
        assert waiting.is_alive() and (held.parent / "held.pt").exists()  # untouched while the other holds it
        (held.parent / "held.pt").rename(held.parent / "checkpoint.pt")
    waiting.join(300)
    assert without_wall(results[0]) == without_wall(text)  # the same runs, the same accuracies
    assert held.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p not in (held, victim))
    assert without_wall((tmp_path / "sweep" / "results.md").read_text()) == without_wall(text)
    # --table-only tabulates the finished cells and runs none: only the row that lost a seed changes.
    lost = tmp_path / "sweep" / "target-source" / "source-only" / "seed1" / "summary.json"
    lost.unlink()
    peek = uda.main([*args, "--table-only"])
    assert not lost.exists()
    changed = [(a, b) for a, b in zip(without_wall(text), without_wall(peek)) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("| target → source | source-only |")
    assert changed[0][1].split("|")[-1].strip() == "1"  # seeds (the wall column is cut off)


def test_uda_sweep_with_remedies(tmp_path):
    import yaml

    uda = load_benchmark("uda")
    make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    args = ["--root", str(tmp_path / "data"), "--tasks", "source:target", "--methods", "source-only,dann", "--domain-labels", "fixed,go",
            "--seeds", "1", "--remedies", "balance-source,balance-target+label-shift-weights", "--refresh-every", "2",
            "--out", str(tmp_path / "sweep"), "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--iters", "4",
            "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet"]
    text = uda.main(args)
    header = [c.strip() for c in text.splitlines()[0].split("|")[1:-1]]
    assert header == ["task", "method", "fixed", "go", "go − fixed", "go − source-only", "seeds", "wall"]
    rows = [dict(zip(header, (c.strip() for c in line.split("|")[1:-1]))) for line in text.strip().splitlines()[2:]]
    assert [r["method"] for r in rows] == ["source-only", "dann", "dann + balance-source", "dann + balance-target + label-shift-weights"]
    baseline = float(rows[0]["go"].split(" ± ")[0])
    for row in rows[2:]:
        assert row["fixed"] == "—" and row["go − fixed"] == "—"
        assert float(row["go − source-only"]) == pytest.approx(float(row["go"].split(" ± ")[0]) - baseline, abs=0.011)
    run = tmp_path / "sweep" / "source-target" / "dann-go+balance-target+label-shift-weights" / "seed0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["balance-target"] and config["label-shift-weights"] and not config["balance-source"] and config["refresh-every"] == 2
    plain = yaml.safe_load((run.parent.parent / "dann-go" / "seed0" / "config.yaml").read_text())
    assert not any(plain[k] for k in ("balance-source", "balance-target", "label-shift-weights"))  # whatever adapt's defaults
    with pytest.raises(SystemExit, match="unknown remedy 'balance-everything'"):
        uda.main([*args[:args.index("--remedies") + 1], "balance-everything", *args[args.index("--remedies") + 2:]])


def test_toy_problems_and_table():
    toy = load_benchmark("toy")
    for name, make in toy.PROBLEMS.items():
        problem = make(0)
        assert problem.xs.shape[1] == problem.xt.shape[1] == 2 and problem.tail.any() and not problem.tail.all()
        assert set(problem.ys) == set(problem.yt) == {0, 1}
    text = toy.main(["--seeds", "2", "--iters", "30"])
    lines = text.strip().splitlines()[2:]
    assert len(lines) == 6 and all(line.endswith("| 2 |") for line in lines)


@pytest.mark.slow
def test_throughput_script_runs_its_figures(tmp_path):
    # A smoke run of benchmarks/throughput.py's figures that gpu.sh does not run, so that a change of
    # the training step's signature cannot break them unnoticed.
    import subprocess

    result = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), "--backbone", "test_resnet", "--image-size", "32",
                             "--device", "cpu", "--steps", "1", "--warmup", "1", "--batch", "4", "--workers", "0", "--figures", "dk"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # the figures gpu.sh runs are checked by its dry run (test_gpu_script_dry_run_on_the_cpu_writes_every_figure)
    for figure in ("(d) full iteration", "(k) --freeze-backbone step: mcc"):
        assert figure in result.stdout, result.stdout


def test_largest_batch_search_finds_the_edge():
    throughput = load_benchmark("throughput")
    for edge in (1, 5, 32, 33, 100, 1000):
        tried = []

        def fits(batch, edge=edge):
            tried.append(batch)
            return batch <= edge

        assert throughput.largest_batch(fits, 32, 1024) == (edge, True)
        assert len(tried) <= 25
    assert throughput.largest_batch(lambda b: True, 32, 200) == (200, True)
    assert throughput.largest_batch(lambda b: False, 32, 200) == (0, True)
    # bounded in time (issue 43): no new size is tried after the seconds given
    import time

    def slow(batch):
        time.sleep(0.05)
        return batch <= 700

    started = time.monotonic()
    found, exact = throughput.largest_batch(slow, 32, 1024, seconds=0.12)
    assert not exact and 32 <= found <= 700 and time.monotonic() - started < 0.5


@pytest.mark.slow
def test_gpu_script_dry_run_on_the_cpu_writes_every_figure(tmp_path):
    """benchmarks/gpu.sh as a session lent a GPU runs it, on a tiny model on the CPU: every section
    runs and leaves its line in $OUT/results.md, so that the GPU's minutes are not lost to a typo;
    and its sections' caps fit one device call (issue 43: at most 360 s)."""
    import os
    import re
    import subprocess

    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "BACKBONES": "test_resnet", "SIZE": "32", "BATCH": "4", "STEPS": "1", "ITERS": "3",
           "DDP_ITERS": "2", "WORKERS": "0", "MAX_BATCH": "8", "DEMO_ITERS": "1", "DEMO_PER_CLASS": "5", "COMPILE_MODES": "default",
           "CAP_SCALE": "4",
           "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "results.md").read_text()
    for line in ("demo: {'source_only'", "- test_resnet (a) adapt step", "- test_resnet (b) step time go", "- test_resnet (f) golabels' "
                                                                                                           "DANN",
                 "- test_resnet (g) peak memory n/a on the CPU; largest batch per domain that fits: 8",
                 "- test_resnet (i) --compile, mode default: first step", "- test_resnet (h) predict on", "onnxruntime "
                                                                                                          "(CPUExecutionProvider)",
                 "- test_resnet (l) loader CPU ms per image", "- end to end (test_resnet, 3 iterations): per-image from the JPEGs",
                 "- data parallel, plain:", "- data parallel, --devices 1:", "exit 0"):
        assert line in table, (line, table)
    assert "reached its cap" not in table
    script = (BENCHMARKS / "gpu.sh").read_text()
    caps = [int(c) for c in re.findall(r"^\s*(?:section|figures) (\d+) ", script, re.M)]
    per_backbone = [int(c) for c in re.findall(r"^  figures (\d+) \"\$backbone\"", script, re.M)]
    assert len(per_backbone) == 3 and sum(caps) + sum(per_backbone) == 355 <= 360  # two backbones by default


def test_prior_estimates_reads_finished_runs_and_resumes(domains, tmp_path, capsys):
    import json

    from conftest import adapt_tiny

    prior_estimates = load_benchmark("prior_estimates")
    source, target = domains
    adapt_tiny(source, target, tmp_path / "runs" / "task" / "dann" / "seed0", "--iters", "4", "--method", "dann")
    (tmp_path / "runs" / "task" / "dann" / "unfinished").mkdir()  # no summary.json: not a run to read
    out = tmp_path / "estimates.jsonl"
    prior_estimates.main([str(tmp_path / "runs"), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["setting"] == "task/dann"
    # the tiny domains have 8 images per class in both: no true shift, and each estimate's error is its own shift
    assert rows[0]["true_shift"] == pytest.approx(0) and rows[0]["em_error"] == pytest.approx(rows[0]["em_shift"])
    assert 0 <= rows[0]["counted_shift"] <= 1 and rows[0]["counted_error"] == pytest.approx(rows[0]["counted_shift"])
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| setting | runs |") and table[2].startswith("| task/dann | 1 | 0.00 |")
    out.write_text(json.dumps({**rows[0], "setting": "measured before"}) + "\n")  # a run already in --out is not measured again
    prior_estimates.main([str(tmp_path / "runs"), "--out", str(out)])
    assert "| measured before | 1 |" in capsys.readouterr().out and len(out.read_text().splitlines()) == 1
    with pytest.raises(SystemExit, match="is not a folder"):
        prior_estimates.main([str(tmp_path / "nowhere"), "--out", str(out)])


@pytest.mark.slow
def test_gpu_sweeps_script_runs_both_sweeps_and_tabulates(tmp_path):
    # benchmarks/gpu_sweeps.sh with the recipe's models swapped for tiny ones, on a CPU: both
    # sweeps run side by side into RUNS and the two tables come out whole.
    import shutil
    import subprocess

    make_two_domains(tmp_path / "data", per_class=4, size=32, seed=5)
    for root, (a, b) in {"office": ("amazon", "webcam"), "digits": ("mnist", "usps")}.items():
        shutil.copytree(tmp_path / "data" / "source", tmp_path / root / a)
        shutil.copytree(tmp_path / "data" / "target", tmp_path / root / b)
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SEEDS": "1", "OFFICE_ITERS": "2", "DIGITS_ITERS": "2",
           "OFFICE_PROCS": "2", "OFFICE_WORKERS": "0", "DIGITS_PROCS": "1", "DEADLINE": "600", "WEIGHTS": "none",
           "OFFICE_BACKBONE": "test_resnet", "DIGITS_BACKBONE": "test_resnet", "OFFICE_SIZE": "32",
           "OFFICE": str(tmp_path / "office"), "DIGITS": str(tmp_path / "digits"), "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_sweeps.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deadline" not in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| task |" not in line and "---" not in line]
    assert len(rows) == 6 + 3  # Office: 2 tasks x 3 methods; digits: 1 task x 3 methods
    assert all(line.split("|")[-3].strip() == "1" for line in rows)  # one seed each, every cell finished
    assert len(list((tmp_path / "runs").rglob("summary.json"))) == 2 * 5 + 5


@pytest.mark.slow
def test_fine_tuning_script_runs_every_recipe_and_tabulates(tmp_path):
    # benchmarks/fine_tuning.sh (issue 23's comparison, and its GPU run) with a tiny backbone on a CPU.
    import subprocess

    import timm
    from safetensors.torch import save_file

    make_two_domains(tmp_path / "data", per_class=4, size=32, seed=5)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(tmp_path / "w.safetensors"))
    env = {**os.environ, "PYTHON": sys.executable, "ROOT": str(tmp_path / "data"), "WEIGHTS": str(tmp_path / "w.safetensors"),
           "OUT": str(tmp_path / "ft"), "TASKS": "source:target", "BACKBONE": "test_resnet", "SIZE": "32", "ITERS": "2",
           "SEEDS": "1", "WORKERS": "0", "BATCH": "4", "DEADLINE": "600"}
    done = subprocess.run(["bash", str(BENCHMARKS / "fine_tuning.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("== ")] == ["== frozen", "== batch-bn", "== "
                                                                                                                               "frozen-bn"]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| source → target |")]
    assert len(rows) == 3 * 2 and all(line.split("|")[-3].strip() == "1" for line in rows)  # every cell finished
    configs = {p.parts[-5]: yaml.safe_load(p.read_text()) for p in (tmp_path / "ft").rglob("cdan-e-fixed/seed0/config.yaml")}
    assert configs["frozen"]["freeze-backbone"] and not configs["batch-bn"]["freeze-bn"] and configs["frozen-bn"]["freeze-bn"]
    assert (configs["batch-bn"]["trade-off"], configs["frozen-bn"]["trade-off"]) == (1, 2)  # before issue 23, and its defaults
    bad = subprocess.run(["bash", str(BENCHMARKS / "fine_tuning.sh")], env={**env, "RECIPES": "frozen,nope"}, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown recipe nope" in bad.stderr


def test_uda_set_passes_any_adapt_option_to_every_cell(tmp_path):
    uda = load_benchmark("uda")
    make_two_domains(tmp_path / "data", per_class=4, size=32, seed=3)
    args = ["--root", str(tmp_path / "data"), "--tasks", "source:target", "--methods", "cdan-e", "--domain-labels", "fixed",
            "--seeds", "1", "--out", str(tmp_path / "sweep"), "--backbone", "test_resnet", "--no-pretrained", "--image-size", "32",
            "--iters", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet",
            "--set", "trade-off=2", "--set", "schedule=reference", "--set", "cdan-map=randomized"]
    uda.main(args)
    config = yaml.safe_load(next((tmp_path / "sweep").rglob("config.yaml")).read_text())
    assert (config["trade-off"], config["schedule"], config["cdan-map"]) == (2, "reference", "randomized")
    for bad in ("trade-off", "no-such-option=1"):
        with pytest.raises(SystemExit, match="--set"):
            uda.main([*args[:-6], "--set", bad])


def test_shift_readings_recompute_the_warning_on_finished_runs(tmp_path, capsys):
    import json

    from conftest import adapt_tiny

    source, target = make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    adapt_tiny(source, target, tmp_path / "runs" / "task" / "cdan-e-fixed" / "seed0", "--iters", "2", "--eval-dir", target)
    load_benchmark("shift_readings").main([str(tmp_path / "runs"), "--out", str(tmp_path / "readings.jsonl")])
    row = json.loads((tmp_path / "readings.jsonl").read_text())
    assert row["setting"] == "runs/task/cdan-e-fixed" and 0 <= row["predicted_shift"] <= 1 and 0 <= row["p"] <= 1
    assert row["true_shift"] == pytest.approx(0.0) and row["warns"] in (True, False)
    assert "| runs/task/cdan-e-fixed | 1 | 0.00 |" in capsys.readouterr().out


def test_bn_stats_pairs_both_statistics_of_each_run(tmp_path, capsys):
    import json
    import sys

    from conftest import adapt_tiny

    source, target = make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    for seed in (0, 1):
        adapt_tiny(source, target, tmp_path / "runs" / "task" / "cdan-e-fixed" / f"seed{seed}", "--iters", "2", "--seed", str(seed),
                   "--eval-dir", target)
    old = sys.argv
    sys.argv = ["bn_stats.py", str(tmp_path / "runs")]
    try:
        load_benchmark("bn_stats").main()
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| task/cdan-e-fixed |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and len(cells[4].split(",")) == 2
    last = [json.loads((tmp_path / "runs" / "task" / "cdan-e-fixed" / f"seed{s}" / "summary.json").read_text())["evals"][-1]
            for s in (0, 1)]
    bn_stats = load_benchmark("bn_stats")
    assert cells[2] == bn_stats.mean_std([e["target_acc_train_bn"] for e in last])
    assert cells[3] == bn_stats.mean_std([e["target_acc"] for e in last])


@pytest.mark.slow
def test_peer_script_dry_run_tllib_rows_beside_golabels_rows(tmp_path):
    """benchmarks/peer.py on tiny folders on a CPU: without TLlib it says why the peer rows are
    skipped and still prints golabels' rows (from a tiny uda.py sweep, on the same feature cache);
    with a TLlib checkout ($TLLIB, else /tmp/tllib, when present) every recipe's row and JSON file appear,
    the features come from the cache the sweep filled, and a second call re-reads the JSON files."""
    import json
    import subprocess

    make_two_domains(tmp_path / "data", per_class=12, size=32, seed=5)  # 36 images a domain: a batch of 36 (tllib-mcc-office31)
    tiny = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--iters", "3", "--seeds", "1",
            "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    load_benchmark("uda").main(["--root", str(tmp_path / "data"), "--tasks", "source:target", "--methods", "mcc",
                                "--domain-labels", "fixed", "--out", str(tmp_path / "sweep"), "--freeze-backbone", "--batch-size", "4",
                                "--quiet", *tiny])
    peer = [sys.executable, str(BENCHMARKS / "peer.py"), "--root", str(tmp_path / "data"), "--tasks", "source:target",
            "--golabels-runs", str(tmp_path / "sweep"), *tiny]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    done = subprocess.run([*peer, "--tllib", str(tmp_path / "no-tllib"), "--out", str(tmp_path / "skipped")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"peer rows skipped: --tllib {tmp_path / 'no-tllib'} does not exist" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line and "| recipe |" not in line]
    assert len(rows) == 1 and rows[0].startswith("| golabels mcc | ") and "| 1 |" in rows[0]
    assert (tmp_path / "skipped" / "results.md").read_text().strip() == done.stdout.strip()

    tllib = os.environ.get("TLLIB", "/tmp/tllib")  # an unpacked TLlib checkout, where one is at hand
    if not Path(tllib, "tllib/alignment/cdan.py").is_file():
        pytest.skip(f"no TLlib checkout at {tllib} (set TLLIB to one)")
    out = tmp_path / "peer"
    done = subprocess.run([*peer, "--tllib", tllib, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PEER_PATCHES:" in done.stdout
    cache = [line for line in done.stderr.splitlines() if line.startswith("features of ")]
    assert len(cache) == 2 and all(line.endswith(", 0 computed") for line in cache), cache  # the sweep's features, read back
    recipes = ("tllib-mcc", "tllib-mcc-office31", "tllib-cdan-e", "tllib-cdan-e+mcc")
    for recipe in recipes:
        row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {recipe} | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0 <= float(cells[1].split(" ± ")[0]) <= 100 and cells[2] == "1"
        result = json.loads((out / "source-target" / recipe / "seed0.json").read_text())
        assert f"{result['accuracy']:.2f}" == cells[3] and result["settings"]["iters"] == 3
        assert {"torch", "timm", "python", "cpu"} <= set(result["environment"])
    assert "| golabels mcc | " in done.stdout
    again = subprocess.run([*peer, "--tllib", tllib, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and " seed 0: " not in again.stderr  # every run re-read, none trained again
    assert again.stdout.split("### ")[1:] == done.stdout.split("### ")[1:]


def test_eval_cost_reports_the_share_of_a_run_spent_evaluating(domains, tmp_path):
    source, target = domains
    tiny = "--backbone test_resnet --no-pretrained --image-size 32 --batch-size 4 --device cpu --workers 0 --iters 4 --eval-every 2"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "eval_cost.py"), str(source), str(target), "--run", tiny, "--out",
                             str(tmp_path / "cost"), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["iters"] == 4 and row["eval_every"] == 2 and row["evaluations"] == 2
    assert 0 < row["eval_seconds"] < row["seconds"] and row["eval_share"] == round(row["eval_seconds"] / row["seconds"], 4)
    again = subprocess.run([sys.executable, str(BENCHMARKS / "eval_cost.py"), str(source), str(target), "--run", tiny, "--out",
                            str(tmp_path / "cost")], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrites a measurement


def test_make_domains_writes_each_corruption_once_and_the_same_bytes_again(tmp_path):
    import shutil

    make_domains = load_benchmark("make_domains")
    make_two_domains(tmp_path, per_class=2, size=32, seed=3)
    made = make_domains.main(["--root", str(tmp_path), "--domains", "target", "--severities", "1,2"])
    assert [p.name for p in made] == [f"target-{k}-{s}" for k in make_domains.KINDS for s in (1, 2)]
    originals = sorted(p.relative_to(tmp_path / "target").with_suffix(".jpg") for p in (tmp_path / "target").rglob("*.png"))
    for folder in made:
        assert sorted(p.relative_to(folder) for p in folder.rglob("*.jpg")) == originals  # same classes, same names
    noisy = tmp_path / "target-noise-2"
    first = {p: p.read_bytes() for p in noisy.rglob("*.jpg")}
    stamp = next(iter(first)).stat().st_mtime_ns
    make_domains.main(["--root", str(tmp_path), "--domains", "target", "--kinds", "noise", "--severities", "2"])
    assert next(iter(first)).stat().st_mtime_ns == stamp  # a finished domain is left as it is
    shutil.rmtree(noisy)
    make_domains.main(["--root", str(tmp_path), "--domains", "target", "--kinds", "noise", "--severities", "2"])
    assert {p: p.read_bytes() for p in noisy.rglob("*.jpg")} == first  # noise seeded by the path
    with pytest.raises(SystemExit, match="unknown kind"):
        make_domains.main(["--root", str(tmp_path), "--domains", "target", "--kinds", "fog"])


@pytest.mark.slow
def test_recipe_search_applies_each_rule_as_the_search_ships_it(tmp_path):
    from conftest import cli

    uda, recipe_search = load_benchmark("uda"), load_benchmark("recipe_search")
    source, target = make_two_domains(tmp_path / "data", per_class=6, size=32, seed=3)
    common = ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--batch-size", "4", "--device", "cpu",
              "--workers", "0"]
    uda.main(["--root", str(tmp_path / "data"), "--tasks", "source:target", "--methods", "mcc,bnm,source-only", "--seeds", "2",
              "--out", str(tmp_path / "sweep"), "--iters", "6", "--freeze-backbone", "--cache-dir", str(tmp_path / "cache"), "--quiet",
              *common])
    text = recipe_search.main(["--sweep", str(tmp_path / "sweep"), "--root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
                               "--tasks", "source:target", "--seeds", "2", "--recipes", "mcc,bnm,source-only", "--default", "mcc"])
    header = [c.strip() for c in text.splitlines()[0].split("|")[1:-1]]
    assert header[:5] == ["task", "seeds", "mcc", "bnm", "source-only"] and "pick: ensemble" in header and "pick: snd" in header
    results = json.loads((tmp_path / "sweep" / "search.json").read_text())["source:target"]
    assert results["seeds"] == 2 and len(results["rules"]["ensemble"]) == 2
    # The product's own search with the sweep's options ships, for seed 0, what the benchmark measured.
    result = cli("adapt", source, target, *common, "--iters", "6", "--freeze-backbone", "--cache-dir", tmp_path / "cache",
                 "--method", "auto", "--search-recipes", "mcc,bnm,source-only", "--eval-dir", target, "--no-balance-source",
                 "--no-balance-target", "--eval-every", "0", "--out", tmp_path / "auto", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["target_acc"] == pytest.approx(results["rules"]["ensemble"][0])
    expected = [results["candidates"][r][0] for r in ("mcc", "bnm", "source-only")]
    assert [c["target_acc"] for c in summary["search"]["candidates"]] == expected
    assert "| ensemble |" in text and "| student |" in text and "| agreement |" in text  # the acceptance table, against --default
    assert "| source → target |" in text.split("student / candidates")[1]  # each stage's seconds
    # ... and with --search-pick student and agreement, the student and the candidate the benchmark measured
    for rule in ("student", "agreement"):
        result = cli("adapt", source, target, *common, "--iters", "6", "--freeze-backbone", "--cache-dir", tmp_path / "cache",
                     "--method", "auto", "--search-recipes", "mcc,bnm,source-only", "--eval-dir", target, "--no-balance-source",
                     "--no-balance-target", "--eval-every", "0", "--search-pick", rule, "--out", tmp_path / rule, "--quiet", "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["target_acc"] == pytest.approx(results["rules"][rule][0])
    assert (tmp_path / "sweep" / "source-target" / "student" / "seed1" / "model.safetensors").is_file()
    # teacher_rules.py reads the same sweep: the teacher's labels, as the ensemble's accuracy, and each refinement's
    rules = load_benchmark("teacher_rules").main(["--sweep", str(tmp_path / "sweep"), "--root", str(tmp_path / "data"), "--cache-dir",
                                                  str(tmp_path / "cache"), "--tasks", "source:target", "--seeds", "2",
                                                  "--members", "mcc,bnm"])
    row = next(line for line in rules.splitlines() if line.startswith("| source → target | 2 |"))
    teacher = float(row.split("|")[3].split("±")[0])
    assert teacher == pytest.approx(100 * sum(results["rules"]["ensemble"]) / 2, abs=0.01)
    assert "knn-5 (members)" in rules and "centroids (backbone)" in rules and "at least as accurate as the teacher's" in rules


@pytest.mark.slow
def test_default_length_runs_the_default_on_small_targets_and_tabulates(tmp_path):
    """benchmarks/default_length.py: a small target is N linked images of the domain (the same N
    for a size and seed, whatever the order of runs), each cell the frozen default with its
    search's source-only candidate beside it."""
    from safetensors.torch import save_file
    import timm

    source, target = make_two_domains(tmp_path / "data", per_class=6, size=32, seed=0)
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(weights))
    script = load_benchmark("default_length")
    first = script.small_target(target, 4, 1, tmp_path / "a")
    again = script.small_target(target, 4, 1, tmp_path / "b")
    assert len(list(first.iterdir())) == 4
    assert sorted(os.stat(p).st_ino for p in first.iterdir()) == sorted(os.stat(p).st_ino for p in again.iterdir())
    out = tmp_path / "out"
    command = [sys.executable, str(BENCHMARKS / "default_length.py"), "small-target", "--root", str(tmp_path / "data"),
               "--tasks", f"{source.name}:{target.name}", "--sizes", "2", "--iters", "2", "--seeds", "1", "--backbone", "test_resnet",
               "--weights", str(weights), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "GOLABELS_TEST": "1"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "2" / f"{source.name}-{target.name}-0" / "summary.json").read_text())
    assert summary["search"]["shipped"] == "source-only"  # 2 target images: too few to adapt on
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {source.name} → {target.name} | 2 | 1 |"))
    assert "| +0.00 | 0/1 |" in row


def test_cache_keys_times_both_keys_of_every_image(domains, monkeypatch, capsys):
    """benchmarks/cache_keys.py (issue 54 item 2): the same images listed and keyed both ways, in
    fresh processes, and a ratio printed; equal files share a content key, never an identity key."""
    source, target = domains
    cache_keys = load_benchmark("cache_keys")
    identity, content = (cache_keys.measure(way, [str(source), str(target)]) for way in ("identity", "content"))
    assert identity["images"] == content["images"] == 48 and identity["distinct"] == 48
    assert content["distinct"] == len({p.read_bytes() for folder in domains for p in folder.rglob("*.png")})
    monkeypatch.setattr(sys, "argv", ["cache_keys.py", str(source), "--repeats", "1"])
    cache_keys.main()
    out = capsys.readouterr().out
    assert "24 images" in out and "identity: list" in out and "content: list" in out and "content / identity, total:" in out


def test_demo_threads_alternates_the_variants_beside_the_load(monkeypatch, capsys):
    """benchmarks/demo_threads.py (issue 55 item 1): each variant's demo in turn, the spinning load
    started before and stopped after, the medians and ratios printed. (The demo itself runs in
    test_eval_demo; here it is a stand-in that records the environment it was given.)"""
    demo_threads = load_benchmark("demo_threads")
    seen = []

    def fake(variant, iters, out):
        seen.append((variant, iters, sum(p.is_alive() for p in started)))
        return {"variant": variant, "seconds": {"chosen": 10.0, "one": 12.0, "default": 50.0}[variant], "threads": 1,
                "source_only": 0.5, "adapted": 0.7}

    started = []
    real_process = demo_threads.multiprocessing.Process

    def process(*args, **kwargs):
        started.append(real_process(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(demo_threads, "demo", fake)
    monkeypatch.setattr(demo_threads.multiprocessing, "Process", process)
    monkeypatch.setattr(sys, "argv", ["demo_threads.py", "--iters", "3", "--repeats", "2", "--load", "1"])
    demo_threads.main()
    assert [v for v, _, _ in seen] == ["chosen", "one", "default"] * 2 and {i for _, i, _ in seen} == {3}
    assert all(alive == 1 for _, _, alive in seen) and not any(p.is_alive() for p in started if (p.join(5) or True))
    out = capsys.readouterr().out
    assert "1 spinning process(es) alongside, median of 2" in out and "default: 50.0 s (5.00x chosen)" in out
    monkeypatch.setattr(sys, "argv", ["demo_threads.py", "--variants", "two"])
    with pytest.raises(SystemExit):
        demo_threads.main()


@pytest.mark.slow
def test_calibration_trains_the_default_and_tabulates_its_calibration(tmp_path, capsys):
    """benchmarks/calibration.py (issue 55 item 10): the default search per task and seed, read
    back when finished; the table holds each task's temperature and ECE before and after."""
    calibration = load_benchmark("calibration")
    make_two_domains(tmp_path / "data", per_class=14, size=32, seed=4)
    args = ["--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--tasks", "source:target", "--seeds", "1",
            "--iters", "4", "--backbone", "test_resnet", "--image-size", "32", "--val-split", "0.8"]
    rows = calibration.main(args)
    assert len(rows["source:target"]) == 1
    for seed in rows["source:target"]:
        assert seed["shipped"] == "student" and seed["temperature"] > 0 and 0 <= seed["ece_after"] <= 1
    table = capsys.readouterr().out
    assert "| source → target | 1 |" in table and "environment:" in table
    finished = sorted(p.stat().st_mtime for p in (tmp_path / "out").rglob("summary.json"))
    calibration.main(args)  # read back, not trained again
    assert sorted(p.stat().st_mtime for p in (tmp_path / "out").rglob("summary.json")) == finished
