import os
import tempfile

# Under pytest-xdist (`-n 2`) each worker is one process of a test suite run on two cores at once:
# one thread each, or four threads fight for two cores and every step slows many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.pop("COLUMNS", None)  # xdist sets its terminal's width here; the tests expect piped output's
# A thread count set for the tests: --freeze-backbone runs would otherwise measure theirs (--threads),
# and two runs a test compares could differ by the count they measured.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
# Tests never reach a model hub: pretrained downloads must fail at once, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GOLABELS_TEST", "1")
# --freeze-backbone's feature cache: never the user's own ~/.cache during tests, and gone after them.
if "GOLABELS_CACHE" not in os.environ:
    import atexit
    import shutil as _shutil

    os.environ["GOLABELS_CACHE"] = tempfile.mkdtemp(prefix="golabels-test-cache-")
    atexit.register(_shutil.rmtree, os.environ["GOLABELS_CACHE"], True)

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from golabels_cli.cli import app
from golabels_cli.synthetic import make_two_domains

TINY = ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--device", "cpu", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="session")
def domains(tmp_path_factory):
    """A 3-class source/target pair of 32 px images, 8 per class and domain."""
    root = tmp_path_factory.mktemp("domains")
    source, target = make_two_domains(root, per_class=8, size=32, seed=1)
    return source, target


@pytest.fixture
def copy_domains(domains, tmp_path):
    """A private, writable copy of the domains for tests that change files."""
    source, target = domains
    return Path(shutil.copytree(source, tmp_path / "source")), Path(shutil.copytree(target, tmp_path / "target"))


def cli(*args, cwd=None):
    """Run golabels in-process; returns click's Result (stdout and stderr kept apart)."""
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def cli_subprocess(*args, env=None, timeout=300, cwd=None):
    """Run golabels as a real process, as a user's shell would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "golabels_cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def exported(domains, tmp_path_factory):
    """A tiny trained run and its default ONNX export (the tests read them, never change them)."""
    source, target = domains
    root = tmp_path_factory.mktemp("exported")
    result = cli("adapt", source, target, *TINY, "--iters", "6", "--out", root / "run", "--quiet")
    assert result.exit_code == 0, result.stderr
    run = root / "run"
    result = cli("export", run, "--onnx", "--json")
    assert result.exit_code == 0, result.stderr
    return run, json.loads(result.stdout)


@pytest.fixture
def shipped(exported):
    """`exported`'s tiny finished run, holding its model.onnx: tests that change files copy them."""
    return exported[0]


def adapt_tiny(source, target, out, *extra):
    result = cli("adapt", source, target, *TINY, "--out", out, "--quiet", *extra)
    assert result.exit_code == 0, result.stderr + result.stdout
    return Path(out)


def one_error_line(result, *words):
    """The command's stderr holds exactly one `error:` line, with every word; no traceback."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def onnx_with_metadata(model: Path, out: Path, **changes) -> Path:
    """A copy of the ONNX `model` at `out` with its golabels metadata changed as `changes` say."""
    import onnx

    proto = onnx.load(str(model))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(changes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.save_model(proto, str(out))
    return out


def tree(root) -> dict[str, tuple[int, bytes]]:
    """Every entry below `root` (links not followed): {relative path: (mode, content)}, to check
    that a refused command changed and created nothing."""
    import hashlib
    import stat

    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = b""
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).digest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.fsencode(os.readlink(path))
            state[os.path.relpath(path, root)] = (st.st_mode, content)
    return state


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def image_paths(folder) -> list[str]:
    """The generated folders' images, in the order predict reads a folder (recursive, sorted)."""
    return sorted(str(p) for p in Path(folder).rglob("*.png"))


def csv_rows(stdout: str) -> list[dict]:
    """predict's CSV output as rows."""
    import csv
    import io

    return list(csv.DictReader(io.StringIO(stdout)))


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the scripts are not a package; one may import another, as run
    from benchmarks/ would)."""
    import importlib.util

    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def interrupt_at(iteration: int):
    """A run's progress listener that presses Ctrl-C (SIGINT to this process) once step `iteration`
    is done: the run saves its state after that step and stops."""
    import os
    import signal

    from golabels_cli.progress import StepDone

    def listen(event) -> None:
        if isinstance(event, StepDone) and event.iter == iteration:
            os.kill(os.getpid(), signal.SIGINT)

    return listen
