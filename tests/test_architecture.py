"""The shape docs/architecture.md promises: short modules and functions, imports that flow one way."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "golabels_cli"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100
# Functions allowed to be longer, and why.
LONG_FUNCTIONS: dict[str, str] = {}


def modules() -> dict[str, Path]:
    """{dotted name: path} of every module of the package (a package's __init__ under the package's name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports, at the top or inside a function alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` and `from .pkg import module` name modules; anything else is an attribute of `target`.
            named = {f"{target}.{alias.name}" for alias in node.names} & known
            found |= named if named else ({target} & known)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known
    return found - {name}


def test_no_module_is_longer_than_500_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_is_longer_than_100_lines():
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{name}.{node.name}"
                if lines > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long[key] = lines
    assert not long, long


def test_no_import_circle():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_library_modules_never_import_the_command_line_or_its_console():
    ui = {"golabels_cli.cli", "golabels_cli.console", "golabels_cli.tables"}
    allowed = {"golabels_cli.cli", "golabels_cli.console", "golabels_cli.tables", "golabels_cli.demo", "golabels_cli.__main__"}
    found = modules()
    offenders = {name: sorted(imports(name, path, set(found)) & ui) for name, path in found.items() if name not in allowed}
    assert not {k: v for k, v in offenders.items() if v}


def test_training_and_inference_sit_below_the_commands_that_read_a_shipped_model():
    """The flow docs/architecture.md draws: training writes a run, and eval, export and predict
    read it; what both sides need (the forward pass over a loader, scoring) is inference.py's."""
    commands = {"golabels_cli.evaluate", "golabels_cli.export", "golabels_cli.predict", "golabels_cli.demo", "golabels_cli.compare"}
    found = modules()
    below = [name for name in found if name.startswith("golabels_cli.training") or name == "golabels_cli.inference"]
    offenders = {name: sorted(imports(name, found[name], set(found)) & commands) for name in below}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_method_registry_is_what_the_cli_and_config_offer():
    """adapt's --help is literal text (it needs no PyTorch): its lists must be the registries'."""
    import dataclasses
    import typing

    from golabels_cli import cli
    from golabels_cli.choices import BN_STATS, FORWARDS, PRECISIONS
    from golabels_cli.config import AdaptConfig
    from golabels_cli.device import DEVICES
    from golabels_cli.domain_labels import MODES
    from golabels_cli.examples import ADAPT_EPILOG
    from golabels_cli.choices import recipe_parts
    from golabels_cli.methods import CDAN_MAPS, REGISTRY, SCHEDULES, TARGET_LOSSES
    from golabels_cli.models import DISCRIMINATORS
    from golabels_cli.trackers import LOGGERS
    from golabels_cli.choices import SELECT_CHOICES

    hints = typing.get_type_hints(cli.adapt, include_extras=True)

    def listed(name: str) -> str:
        return hints[name].__metadata__[0].help

    for name, choices in (("method", recipe_parts()), ("domain_labels", MODES), ("select", SELECT_CHOICES),
                          ("discriminator", DISCRIMINATORS),
                          ("cdan_map", CDAN_MAPS), ("schedule", SCHEDULES), ("forward", FORWARDS), ("bn_stats", BN_STATS),
                          ("precision", PRECISIONS), ("device", DEVICES), ("logger", LOGGERS)):
        for choice in choices:
            assert choice in listed(name), (name, choice)
    fields = {f.name for f in dataclasses.fields(AdaptConfig)}
    for method in (*REGISTRY.values(), *TARGET_LOSSES.values()):
        assert f"- {method.name}: {method.summary}" in ADAPT_EPILOG, method.name
        assert set(method.options) <= fields, method.name
    for mode in MODES:
        assert mode in ADAPT_EPILOG


def test_every_list_of_validators_comes_from_the_one_table():
    """Adding a validator is one row of validators.VALIDATORS: every other list is derived from it."""
    import torch

    from golabels_cli import choices, console, report, trackers
    from golabels_cli.validators import LABEL_FREE, VALIDATORS, Outputs, compute_validators, is_evaluation_row

    keys = [v.key for v in VALIDATORS]
    assert choices.SELECT_CHOICES == ("last", *(v.name for v in VALIDATORS))
    assert list(console.NAMES) == keys and report.LABEL_FREE == LABEL_FREE
    # No other module writes its own list of them: no literal holding two validators' keys or names.
    spelled = {v.key for v in VALIDATORS if len(v.key) > 2} | {v.name for v in VALIDATORS if len(v.name) > 2}  # "im" is also a method
    lists = []
    for name, path in modules().items():
        if name != "golabels_cli.validators":
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                    items = node.keys if isinstance(node, ast.Dict) else node.elts
                    if len({i.value for i in items if isinstance(i, ast.Constant)} & spelled - {"target_acc", "target-acc"}) >= 2:
                        lists.append(f"{name}:{node.lineno}")
    assert not lists, lists
    assert all(trackers.TAGS[key] == f"validators/{key}" for key in LABEL_FREE)
    logits = torch.randn(6, 3)
    values = compute_validators(Outputs(logits, torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 4), torch.randn(6, 4), logits,
                                        torch.randn(6, 4)))
    assert tuple(values) == LABEL_FREE and is_evaluation_row({"iter": 1, **values}) and not is_evaluation_row({"iter": 1, "loss_cls": 1.0})


def test_the_registries_are_the_torch_free_names_the_config_checks():
    from golabels_cli import choices
    from golabels_cli.methods import BASELINE, REGISTRY, TARGET_LOSSES

    assert list(REGISTRY) == list(choices.ALIGNMENT_TERMS) and BASELINE == choices.BASELINE
    assert {name: m.reference_discriminator for name, m in REGISTRY.items()} == choices.ALIGNMENT_TERMS
    assert tuple(TARGET_LOSSES) == choices.TARGET_LOSS_NAMES
    for name, method in REGISTRY.items():
        assert choices.parse_recipe_name(name).adversarial == method.adversarial, name


def test_options_are_checked_before_torch_loads():
    """A misspelt value is refused as fast as a misspelt option: config.py and the checks it runs
    import neither torch nor timm, and `adapt` with a bad --method exits 2 in well under 3 s."""
    import subprocess
    import sys
    import time

    code = "import sys, golabels_cli.config, golabels_cli.cli; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "golabels_cli", "adapt", "src", "tgt", "--method", "cdan-x"], capture_output=True,
                            text=True)
    seconds = time.perf_counter() - started
    assert result.returncode == 2 and result.stderr.startswith("error: unknown method 'cdan-x' — did you mean")
    assert seconds < 3, seconds


def test_every_method_module_carries_its_formula():
    import importlib

    from golabels_cli.methods import REGISTRY

    for name, method in REGISTRY.items():
        module = importlib.import_module(f"golabels_cli.methods.{name.replace('-', '_')}")
        assert module.METHOD is method
        assert module.__doc__ and ("L_adv" in module.__doc__ or "L =" in module.__doc__), name


def test_every_target_loss_module_carries_its_formula():
    import importlib

    from golabels_cli.methods import TARGET_LOSSES

    for name, loss in TARGET_LOSSES.items():
        module = importlib.import_module(f"golabels_cli.methods.{name}")
        assert module.LOSS is loss
        assert module.__doc__ and f"L_{name} =" in module.__doc__, name


def test_every_package_ships_in_the_wheel():
    """pyproject's package list finds every package with an __init__.py (a plain list of the
    top-level one shipped wheels without training/ and methods/)."""
    import tomllib

    import setuptools

    root = PACKAGE.parent
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    expected = {".".join(p.parent.relative_to(root).parts)
                for top in ("golabels", "golabels_cli") for p in (root / top).rglob("__init__.py")}
    assert set(setuptools.find_packages(str(root), include=include)) == expected


def test_every_adapt_option_is_generated_from_its_declaration():
    """Adding an adapt option is one field of options.AdaptConfig (or RunOptions): the command's
    parameters, defaults, help and panels are generated from it, and config.validate checks its
    declared choices."""
    import dataclasses

    import pytest
    from typer.main import get_command

    from golabels_cli.choices import recipe_parts
    from golabels_cli.cli import app
    from golabels_cli.config import build_config
    from golabels_cli.errors import InputError
    from golabels_cli.options import AdaptConfig, RunOptions, declaration

    command = get_command(app).commands["adapt"]
    params = {p.name: p for p in command.params}
    declared = [*dataclasses.fields(AdaptConfig), *dataclasses.fields(RunOptions)]
    assert set(params) - {"help"} == {f.name for f in declared}
    for f in declared:
        spec, param = declaration(f), params[f.name]
        assert param.default == f.default and param.help == spec.text(), f.name
        assert getattr(param, "rich_help_panel", None) == spec.panel, f.name
        assert all(choice in spec.text() for choice in spec.choices), f.name  # every choice is offered in --help
        assert set(spec.methods) <= set(recipe_parts()) and all(part in param.help for part in spec.methods), f.name
    for f in dataclasses.fields(AdaptConfig):
        if declaration(f).choices:
            with pytest.raises(InputError, match=f"unknown {f.name.replace('_', '-')} 'no-such-value'"):
                build_config({"source": "s", "target": "t", "method": "cdan-e", f.name: "no-such-value"})


def test_a_methods_own_options_are_the_ones_declared_for_it():
    from golabels_cli.methods import REGISTRY, TARGET_LOSSES, get_recipe
    from golabels_cli.options import options_of

    for name, part in (*REGISTRY.items(), *TARGET_LOSSES.items()):
        assert part.options == options_of(name), name
    assert get_recipe("cdan-e+mcc").options == ("target_loss_weight", "mcc_temperature")
    assert get_recipe("gvb+bnm").options == ("bridge_g_weight", "bridge_d_weight", "target_loss_weight")


def test_benchmarks_use_only_the_public_api_and_the_documented_hooks():
    """A benchmark imports names from `golabels` (the API) and `golabels.hooks` only, each one in
    that module's __all__ and each hook documented in docs/python.md: nothing else in golabels_cli
    is a contract, so moving it breaks no benchmark."""
    import golabels
    import golabels.hooks

    root = PACKAGE.parent
    allowed = {"golabels": set(golabels.__all__), "golabels.hooks": set(golabels.hooks.__all__)}
    offenders = []
    for path in sorted((root / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("golabels"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name not in allowed.get(node.module, ())]
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("golabels") and a.name not in allowed]
        # golabels is imported as installed, never from a path a script puts first (peer.py's TLlib checkout is a peer's, not ours)
        if "sys.path" in path.read_text() and path.name != "peer.py":
            offenders.append(f"{path.name}: edits sys.path")
    assert not offenders, offenders
    documented = (root / "docs" / "python.md").read_text()
    assert not [name for name in golabels.hooks.__all__ if f"`{name}`" not in documented and f"`{name}(" not in documented]


def test_a_run_directorys_file_names_are_spelled_in_run_files_only():
    """Every module names a run's files through run_files (docstrings, comments and help texts may
    mention them): renaming one is one edit."""
    import re

    names = re.compile(r"""["'](config\.yaml|metrics\.jsonl|checkpoint\.pt|model\.safetensors|summary\.json|results\.csv|results\.png|"""
                       r"""target-mosaic\.png|model\.onnx|tensorboard|report-\w+\.png)["']""")
    offenders = []
    for name, path in modules().items():
        if name in ("golabels_cli.run_files", "golabels_cli.choices", "golabels_cli.trackers"):  # --logger's values are tool names
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and names.fullmatch(repr(node.value)):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def test_layers_library_then_command_engines_then_api_then_front_ends():
    """docs/architecture.md's layers: the library (config, data, models, methods, inference,
    training, ...) imports no command module; the commands' engines (evaluate, export, predict)
    import the library only; the API imports both; the front ends (cli, demo) run training, eval
    and export through the API, never through training/ itself."""
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    engines = {f"golabels_cli.{m}" for m in ("evaluate", "export", "predict", "compare")}
    front = {f"golabels_cli.{m}" for m in ("cli", "console", "tables", "help", "examples", "demo", "__main__")}
    commands = engines | front | {"golabels_cli.api"}
    library = set(found) - commands
    assert not {n: sorted(graph[n] & commands) for n in library if graph[n] & commands}
    assert not {n: sorted(graph[n] & (commands - engines)) for n in engines if graph[n] & (commands - engines)}
    assert not graph["golabels_cli.api"] & front
    training = {n for n in found if n.startswith("golabels_cli.training")}
    assert not {n: sorted(graph[n] & training) for n in front if graph[n] & training}


def _names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def test_the_step_and_the_objective_read_no_config():
    """training/step.py's Step is forward, objective, backward: what it weighs and which method
    it runs are the objective's constructor arguments, never read from the config in the step."""
    tree = ast.parse(modules()["golabels_cli.training.step"].read_text())
    step = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Step")
    assert "cfg" not in _names_in(step)
    objective = ast.parse(modules()["golabels_cli.methods.objective"].read_text())
    assert "cfg" not in _names_in(objective) and "AdaptConfig" not in _names_in(objective)


def test_the_built_run_is_frozen_and_the_loop_state_holds_what_changes():
    import dataclasses

    import pytest

    from golabels_cli.training.state import LoopState, Training

    assert Training.__dataclass_params__.frozen and not LoopState.__dataclass_params__.frozen
    fields = {f.name for f in dataclasses.fields(Training)}
    assert "selected_weights" not in fields and "selected_weights" in LoopState.__dataclass_fields__
    t = object.__new__(Training)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.features = None


def test_ranges_are_checked_only_where_they_are_declared():
    """An option's range sits in its Option (options.py); config.validate refuses a value outside
    it from there. A check elsewhere comparing one option to a number and raising InputError is a
    range kept apart from its declaration; checks combining options are allowed."""
    import dataclasses

    import pytest

    from golabels_cli.config import build_config
    from golabels_cli.errors import InputError
    from golabels_cli.options import FIELDS, AdaptConfig, declaration

    # combined checks written as an if inside a function that returned early for the other option
    combined = {"golabels_cli.config._check_search": "--devices with --method auto"}
    fields = set(FIELDS)
    offenders = []
    for name, path in modules().items():
        for function in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)):
            if f"{name}.{function.name}" in combined:
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.If) or not any(isinstance(s, ast.Raise) and "InputError" in _names_in(s) for s in node.body):
                    continue
                # a range check: one option compared with numbers, nothing else in the test
                names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
                options = {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute) and n.attr in fields}
                numbers = [n for n in ast.walk(node.test) if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))]
                if names <= {"cfg"} and len(options) == 1 and numbers:
                    offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders
    # and every declared range is refused at its edge
    for f in dataclasses.fields(AdaptConfig):
        spec = declaration(f)
        if spec.minimum is None:
            continue
        below = spec.minimum if spec.open_min else spec.minimum - (1 if "int" in f.type else 1e-3)
        with pytest.raises(InputError, match=f"--{f.name.replace('_', '-')} must be"):
            build_config({"source": "s", "target": "t", "method": "cdan-e", f.name: below})


def test_every_command_goes_through_the_api():
    """The front ends (cli.py, demo.py) do a command's work through api.py: from the engines and
    the library they import only declarations, output formatting and file writers, never a
    function that trains, loads a model, predicts or reads a run."""
    allowed = {
        "golabels_cli.predict": {"csv_header", "csv_row", "jsonl_row", "warn_skipped"},  # rows and the skip warning
        "golabels_cli.evaluate": {"check_new_file", "write_confusion_csv", "write_confusion_plots"},  # eval's output files
        "golabels_cli.compare": {"write_compare_figure"},  # compare's figure
    }
    doing = {"golabels_cli.training", "golabels_cli.report", "golabels_cli.export", "golabels_cli.inference", "golabels_cli.models",
             "golabels_cli.features", "golabels_cli.checkpoint", *allowed}
    offenders = []
    for name in ("golabels_cli.cli", "golabels_cli.demo"):
        for node in ast.walk(ast.parse(modules()[name].read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = "golabels_cli." + (node.module or "")
                if any(module == d or module.startswith(d + ".") for d in doing):
                    offenders += [f"{name}: {module}.{a.name}" for a in node.names if a.name not in allowed.get(module, set())]
    assert not offenders, offenders
    api = modules()["golabels_cli.api"].read_text()
    assert api.startswith('"""golabels from Python: what the seven commands do')
    for command in ("adapt", "resume", "evaluate", "export_onnx", "predict", "report", "compare"):
        assert f"\ndef {command}(" in api, command


def test_line_length_is_held_by_the_linter_in_ci():
    import tomllib

    root = PACKAGE.parent
    ruff = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["line-length"] <= 140 and "E" in ruff["lint"]["select"]  # E501: lines over line-length
    assert "make lint" in (root / ".ci" / "run").read_text()
    assert "ruff check" in (root / "Makefile").read_text()
