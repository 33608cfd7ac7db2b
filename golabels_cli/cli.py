"""The `golabels` command: one thin function per command (parse -> call the library -> render)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Any, Callable, Optional

import typer
from typing_extensions import Annotated

from . import __version__
from .console import AdaptProgress, StepProgress, plural, print_error, print_json, setup_logging, stderr, stdout, usage_error_line
from .errors import AlreadyReported, InputError
from .help import AdaptCommand, Command, Group, with_declared_options
from .options import RUN_FIELDS, AdaptConfig, RunOptions, declaration
from .examples import ADAPT_EPILOG, COMPARE_EPILOG, DEMO_EPILOG, EVAL_EPILOG, EXPORT_EPILOG, PREDICT_EPILOG, REPORT_EPILOG
from .progress import listening, tracked

log = logging.getLogger("golabels")

app = typer.Typer(
    name="golabels",
    cls=Group,
    help="Adapt an image classifier from a labeled source folder to an unlabeled target folder "
    "(adversarial domain adaptation with Go-labels), evaluate it, and ship it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"golabels {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass


def guarded(fn: Callable) -> Callable:
    """Run a command body: one-line errors with their exit codes, tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .api import command_line

        debug = bool(kwargs.get("debug"))
        setup_logging(quiet=bool(kwargs.get("quiet")), debug=debug)
        in_command = command_line.set(True)
        try:
            if sys.stdout is None:  # started with stdout closed (`>&-`): Python then has none
                raise InputError("standard output is closed: the results would have nowhere to go",
                                 "leave it open, or send it to a file (> results.txt) or to /dev/null")
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            raise typer.Exit(130)
        except BrokenPipeError:
            # The reader of stdout went away (`... | head`): stop quietly, as a shell tool would.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141)
        except Exception as exc:
            if debug:
                raise
            if not isinstance(exc, AlreadyReported):
                print_error(exc)
            raise typer.Exit(getattr(exc, "exit_code", 1))
        finally:
            command_line.reset(in_command)

    return wrapper


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    # Compared by name: typer may carry its own copy of click's ParameterSource enum.
    return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"


# The other commands' output flags, as adapt's (options.RunOptions) declare them.
JsonOpt = Annotated[bool, typer.Option("--json", help=declaration(RUN_FIELDS["json"]).help)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help=declaration(RUN_FIELDS["quiet"]).help)]
DebugOpt = Annotated[bool, typer.Option("--debug", help=declaration(RUN_FIELDS["debug"]).help)]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | mps. auto picks CUDA, then MPS, else CPU.")]
EvalBatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]  # eval's and compare's forward passes
EvalWorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Loader processes; default min(8, CPUs - 1).", show_default=False)]


@app.command(epilog=ADAPT_EPILOG, cls=AdaptCommand)
@guarded
@with_declared_options(AdaptConfig, RunOptions)
def adapt(ctx: typer.Context, **options: Any) -> None:
    """Train a classifier on SOURCE that works on TARGET. Writes a run directory with the model."""
    from .distributed import env_rank, rank_error

    json_, quiet, debug = options["json"], options["quiet"], options["debug"]
    rank = env_rank()
    if rank > 0:
        quiet = True  # rank 0 shows progress, warnings and the results; the others speak only of their own failures
        setup_logging(quiet=True, debug=debug)
    output_flags = [*(["--json"] if json_ else []), *(["--quiet"] if quiet else []), *(["--debug"] if debug else [])]
    run = (_resumed_run(ctx, options["resume"], output_flags, debug) if options["resume"] is not None
           else _new_run(ctx, options["config"], options["print_config"], output_flags, debug))
    if run is None:
        return  # the config was printed, or worker processes ran it
    progress = AdaptProgress(quiet=quiet)
    try:
        with _steps_shown(quiet, adapt=progress):
            summary = run(progress=progress).summary
    except Exception as exc:
        reported = rank_error(exc, rank)
        try:
            if reported is exc:
                raise
            raise reported from exc
        finally:
            del reported  # no reference cycle through this frame: the loop's loader workers must stop before exit
    finally:
        progress.end()
    if rank == 0:  # the results, once
        from .results import plots_available
        from .tables import print_adapt_summary, print_search_summary

        (print_json if json_ else print_search_summary if "search" in summary else print_adapt_summary)(summary)
        if not quiet and not plots_available():  # said once, at the end: the run drew no results.png and no mosaic
            stderr.print("no results.png or target-mosaic.png: matplotlib is not installed (pip install 'golabels[plots]')",
                         markup=False)


def _resumed_run(ctx: typer.Context, run_dir: str, output_flags: list[str], debug: bool) -> Callable | None:
    """adapt --resume: the run to call, or None when worker processes ran it (--devices)."""
    from .config import RESUME_LENGTH, RESUME_OPTIONS
    from .yaml_files import run_config
    from .api import resume
    from .distributed import check_devices, launch, launched_by_torchrun, option_flags

    may_change = (*RESUME_OPTIONS, *RESUME_LENGTH)
    changed = [k for k in ctx.params if _from_command_line(ctx, k) and k not in (*may_change, "resume", "out", "json", "quiet", "debug")]
    if changed:
        name = changed[0].upper() if changed[0] in ("source", "target") else "--" + changed[0].replace("_", "-")
        raise InputError(f"{name} can't be given with --resume: a resumed run keeps its own config",
                         f"only {', '.join('--' + o.replace('_', '-') for o in may_change)} may change (and --out continues it in a new "
                         "folder); start a new run to change more")
    overrides = {k: ctx.params[k] for k in may_change if _from_command_line(ctx, k)}
    out = ctx.params.get("out") if _from_command_line(ctx, "out") else None
    saved = run_config(run_dir)  # {} when it can't be read: resume then says why
    devices = overrides.get("devices", 1 if launched_by_torchrun() else saved.get("devices", 1))  # torchrun decides
    check_devices(devices, overrides.get("device", saved.get("device", "auto")))
    if devices > 1 and not launched_by_torchrun():
        if out is not None:
            raise InputError("--out with --resume continues a run in one process", "leave --devices out, or resume it in its own folder")
        launch(devices, ["adapt", "--resume", run_dir, *option_flags({**overrides, "devices": devices}), *output_flags], debug)
        return None
    return functools.partial(resume, run_dir, out=out, **overrides)


def _new_run(ctx: typer.Context, config: str | None, print_config: bool, output_flags: list[str], debug: bool) -> Callable | None:
    """adapt SOURCE TARGET: the config from --config and the flags given (which win), and the run
    to call; None when the config was printed or worker processes ran it (--devices)."""
    from .config import build_config, load_yaml, recompute_derived, to_yaml

    given = {k: v for k, v in ctx.params.items() if k not in ("config", "json", "print_config")}
    values: dict[str, Any] = load_yaml(config) if config else {}
    on_command_line = {name for name in given if _from_command_line(ctx, name)}
    for name, value in given.items():
        if name not in values or name in on_command_line:
            values[name] = value
    recomputed = recompute_derived(values, on_command_line) if config else []
    cfg = build_config(values)  # every value checked before torch and timm load: a typo is refused in a second
    if recomputed:
        log.info("%s: computed again for the options given here, not read from %s", ", ".join(recomputed), config)
    from .api import adapt, resolve_config
    from .distributed import check_devices, launch_new_run, launched_by_torchrun

    if print_config:
        sys.stdout.write(to_yaml(resolve_config(cfg)))
        return None
    check_devices(cfg.devices, cfg.device)
    if cfg.devices > 1 and not launched_by_torchrun():
        launch_new_run(to_yaml(cfg), cfg.devices, values.get("out"), bool(values.get("exist_ok")), output_flags, debug)
        return None
    return functools.partial(adapt, cfg, values.get("out"), bool(values.get("exist_ok")))


@contextlib.contextmanager
def _steps_shown(quiet: bool, closing: bool = True, adapt: AdaptProgress | None = None):
    """Progress of the command's slow steps on stderr (console.StepProgress, on adapt's own bar
    while it is live), none under --quiet."""
    if quiet:
        yield
        return
    steps = StepProgress(adapt=adapt, closing=closing)
    try:
        with listening(steps):
            yield
    finally:
        steps.close()


@app.command("eval", epilog=EVAL_EPILOG, cls=Command)
@guarded
def eval_(
    run_or_model: Annotated[str, typer.Argument(help="A run directory or a model.safetensors file.", show_default=False)],
    data_dir: Annotated[str, typer.Argument(metavar="DIR", help="Labeled folder, `DIR/<class>/<image>`; classes matched by name.",
                                            show_default=False)],
    confusion: Annotated[Optional[str], typer.Option(metavar="FILE",
                                                     help="Write the confusion matrix to this CSV file (never overwritten).",
                                                     show_default=False)] = None,
    plots: Annotated[bool, typer.Option("--plots", help="Also draw the confusion matrix beside the model, normalized and in image counts: "
                                                        "confusion-FOLDER.png and confusion-FOLDER-counts.png, never overwritten (-2, -3, "
                                                        "...; needs matplotlib).")] = False,
    batch_size: EvalBatchOpt = 64,
    workers: EvalWorkersOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Top-1 and mean per-class accuracy, a per-class table and the confusion matrix on a labeled folder."""
    from .api import evaluate
    from .config import default_workers
    from .evaluate import check_new_file, write_confusion_csv, write_confusion_plots

    if confusion:
        check_new_file(confusion, "--confusion")
    if workers is None:
        workers = default_workers()  # as adapt: the images decode beside the model
    if batch_size < 1 or workers < 0:
        raise InputError("--batch-size must be positive and --workers non-negative")
    with _steps_shown(quiet):
        result = evaluate(run_or_model, data_dir, device=device, batch_size=batch_size, workers=workers)
    if confusion:
        write_confusion_csv(result, confusion)
    figures = write_confusion_plots(result, run_or_model, data_dir) if plots else []
    if figures is None:
        stderr.print("no confusion-matrix figures: matplotlib is not installed (pip install 'golabels[plots]')", markup=False)
    if json_:
        print_json({**result.to_dict(), **({"confusion_figures": [str(f) for f in figures or []]} if plots else {})})
    else:
        from .tables import print_eval

        print_eval(result, f"golabels eval: {run_or_model} on {data_dir}")
        if figures:
            stdout.print(f"confusion matrices: {figures[0]} (normalized), {figures[1]} (image counts)", markup=False)


@app.command(epilog=DEMO_EPILOG, cls=Command)
@guarded
def demo(
    out: Annotated[Optional[str],
                   typer.Option(metavar="DIR", help="Folder for the data and runs; default: runs/demo/exp, exp2, ...",
                                show_default=False)] = None,
    iters: Annotated[int, typer.Option(help="Iterations of each run.")] = 1000,
    per_class: Annotated[Optional[int], typer.Option("--per-class", metavar="N", show_default=False,
                                                     help="Images of each digit in each domain; default 300 (fewer: a quicker, "
                                                          "noisier demo).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of both runs' training (the demo's images are the same for every seed).")] = 0,
    device: DeviceOpt = "cpu",
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate two digit domains; train source-only and adapted with golabels' defaults, evaluate both on the target, export to ONNX, predict."""  # noqa: E501 - --help's text
    from .demo import MIN_PER_CLASS, print_demo, run_demo
    from .options import MAX_SEED

    if iters < 1 or not 0 <= seed <= MAX_SEED or (per_class is not None and per_class < MIN_PER_CLASS):
        raise InputError(f"--iters must be positive, --per-class at least {MIN_PER_CLASS} and --seed in [0, {MAX_SEED}]")
    result = run_demo(out, iters=iters, device=device, seed=seed, progress_factory=lambda: AdaptProgress(quiet=quiet or json_),
                      say=(lambda s: None) if quiet or json_ else stderr.print, per_class=per_class)
    if json_:
        print_json(result)
    else:
        print_demo(result)


@app.command(epilog=EXPORT_EPILOG, cls=Command)
@guarded
def export(
    run_or_model: Annotated[str, typer.Argument(help="A run directory or a model.safetensors file.", show_default=False)],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format, so the default).")] = False,
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="FILE", help="The .onnx file; default: model.onnx beside the "
                                                                                         "model.", show_default=False)] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
    batch: Annotated[Optional[int],
                     typer.Option(help="Fix the batch size in the graph (some runtimes need it).", show_default=False)] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Any batch size (the default).")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the graph and compare onnxruntime with PyTorch (max |diff| <= "
                                                                      "1e-4).")] = True,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace an existing output file.")] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export an adapted model to ONNX, with its classes and preprocessing in the file, verified against PyTorch."""
    from .api import export_onnx

    if batch is not None and dynamic_batch:
        raise InputError("--batch and --dynamic-batch exclude each other", "pass one of them")
    with _steps_shown(quiet):
        result = export_onnx(run_or_model, output, opset=opset, batch=batch, verify=verify, exist_ok=exist_ok)
    if json_:
        print_json(result.to_dict())
        return
    stdout.print(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, opset {result.opset}, "
                 f"{'batch ' + str(result.batch) if result.batch else 'dynamic batch'}, {result.classes} classes) in "
                 f"{result.seconds:.1f}s: "
                 + ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in result.phase_seconds.items()))
    if result.max_abs_diff is None:
        stdout.print("not verified (--no-verify)")
    else:
        stdout.print(f"verified: max |probability difference| onnxruntime vs. PyTorch {result.max_abs_diff:.2e} on {result.verified_on}")


@app.command(epilog=PREDICT_EPILOG, cls=Command)
@guarded
def predict(
    model: Annotated[str, typer.Argument(help="A run directory, a model.safetensors or a .onnx file.", show_default=False)],
    inputs: Annotated[Optional[list[str]],
                      typer.Argument(help="Image files, folders (recursive), or - to read paths from stdin.", show_default=False)] = None,
    format_: Annotated[str, typer.Option("--format", help="csv | jsonl.")] = "csv",
    top_k: Annotated[int, typer.Option(help="Add the next most probable labels, ranks 2 to K, with their probabilities (CSV: top2_label, "
                                            "top2_probability, ...; JSONL: top_k, all K).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    workers: Annotated[Optional[int], typer.Option(help="Decoding threads; default min(8, CPUs).", show_default=False)] = None,
    null: Annotated[bool, typer.Option("--null", "-0", help="With -: paths on stdin end with NUL, not newline (find -print0), so any name "
                                                            "works.")] = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict labels for images; one row per image on stdout (CSV or JSON lines)."""
    import time

    # Only torch-free modules here: an .onnx model must run without PyTorch installed.
    from .api import predict as predict_labels
    from .errors import RunError
    from .predict import csv_header, csv_row, jsonl_row, warn_skipped

    if not inputs:
        raise InputError("no inputs given", "pass image files, folders, or - to read paths from stdin")
    if format_ not in ("csv", "jsonl"):
        raise InputError(f"unknown --format {format_!r}", "pass csv or jsonl")
    if batch_size < 1 or (workers is not None and workers < 0) or top_k < 0:
        raise InputError("--batch-size must be positive; --workers and --top-k not negative")
    missing = [item for item in inputs if item != "-" and not os.path.lexists(item)]
    if missing:  # a typo on the command line: before any work, and before the CSV header
        raise InputError(f"{missing[0]} does not exist" + (f" (nor {len(missing) - 1} more of the inputs)" if len(missing) > 1 else ""),
                         "pass image files, folders, or - to read paths from stdin")
    skipped: list[str] = []

    def on_skip(path: str, why: str) -> None:
        skipped.append(path)
        warn_skipped(path, why)

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    labels = predict_labels(model, inputs, device, batch_size, n_workers, on_skip, paths_from=sys.stdin.buffer, null=null)
    out = sys.stdout.buffer
    rows, started, backend = 0, time.perf_counter(), ""
    with _steps_shown(quiet, closing=False):  # the closing line is the log's below, which names the backend
        for label in tracked(labels, "predict", None):
            if not rows:
                if top_k > len(label.classes):
                    raise InputError(f"--top-k {top_k} is more than the model's {len(label.classes)} classes",
                                     f"pass --top-k {len(label.classes)} or less")
                out.write(csv_header(top_k).encode() if format_ == "csv" else b"")
                backend = label.backend
            text = (csv_row if format_ == "csv" else jsonl_row)(label, label.classes, top_k)
            rows += 1
            out.write(text.encode("utf-8", "surrogateescape"))  # non-UTF-8 file names come back as they were
            out.flush()  # a row as soon as it is known: the next command of a pipeline reads it
    if rows == 0 and not skipped:
        raise InputError("no images found in the inputs", "pass image files or folders that hold images")
    seconds = time.perf_counter() - started
    log.info("predicted %s in %.1fs (%.1f images/s) with %s", plural(rows, "image"), seconds, rows / max(seconds, 1e-9), backend)
    if skipped:
        written = f"the other {plural(rows, 'row')} {'was' if rows == 1 else 'were'} written" if rows else "no row was written"
        raise RunError(f"{len(skipped)} of {plural(rows + len(skipped), 'input')} could not be read; {written}", "see the warnings above")


@app.command(epilog=REPORT_EPILOG, cls=Command)
@guarded
def report(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="A run directory written by golabels adapt (finished, interrupted or "
                                                               "running).", show_default=False)],
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write report-*.png into the run directory (needs matplotlib).")] = True,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Summarize a run: data, losses, discriminator accuracy, relabeled fractions, validators; PNG plots with matplotlib."""
    from .api import report as load_report
    from .tables import print_plots_line, print_report, print_search_report

    result = load_report(run_dir, plots=plots)
    if json_:
        print_json(result.to_dict())
    elif result.is_search:
        print_search_report(result.record)
        if plots and not quiet:
            print_plots_line(result.plots)
    else:
        print_report(result.record, result.plots, plots and not quiet)


@app.command(epilog=COMPARE_EPILOG, cls=Command)
@guarded
def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Finished run directories (two or more).", show_default=False)],
    eval_dir: Annotated[Optional[str], typer.Option(metavar="DIR", help="A labeled folder of the target (`DIR/<class>/<image>`): "
                                                                        "accuracy with a 95% interval, and a paired test between "
                                                                        "groups on its images.", show_default=False)] = None,
    plot: Annotated[Optional[str], typer.Option(metavar="FILE", help="Also draw the groups' accuracies into this PNG (needs "
                                                                     "--eval-dir and matplotlib; never overwritten).",
                                                show_default=False)] = None,
    batch_size: EvalBatchOpt = 64,
    workers: EvalWorkersOpt = None,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the permutation test.")] = 0,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Runs side by side: the options that differ, the validators, and with --eval-dir the accuracy and whether a difference is chance."""
    from .api import compare as compare_runs
    from .compare import write_compare_figure
    from .config import default_workers
    from .evaluate import check_new_file

    if plot is not None:
        if eval_dir is None:
            raise InputError("--plot draws accuracies, which need --eval-dir", "pass --eval-dir LABELED_DIR")
        check_new_file(plot, "--plot")
    if batch_size < 1 or (workers is not None and workers < 0):
        raise InputError("--batch-size must be positive and --workers non-negative")
    with _steps_shown(quiet):
        result = compare_runs(runs, eval_dir, device=device, batch_size=batch_size,
                              workers=default_workers() if workers is None else workers, seed=seed)
    if plot is not None:
        written = write_compare_figure(result, plot)
        if written is None:
            stderr.print("no figure: matplotlib is not installed (pip install 'golabels[plots]')", markup=False)
        result["plot"] = str(written) if written else None
    if json_:
        print_json(result)
    else:
        from .tables import print_compare

        print_compare(result)


def main() -> None:
    """The console script: click's usage errors in golabels' one-line form, with a hint."""
    try:
        from typer._click import exceptions as click_errors  # recent typer carries its own click
    except ImportError:
        from click import exceptions as click_errors

    try:
        code = app(prog_name="golabels", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()  # the help screen
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        sys.stderr.write(usage_error_line(exc) + "\n")
        sys.exit(exc.exit_code)
    except typer.Abort:  # click's Abort, or typer's own where typer carries its click (it has none there)
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
