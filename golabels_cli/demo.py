"""`golabels demo`: the whole job on an embedded example — adapt, evaluate, export, predict — in about two minutes on two CPU cores."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from . import api
from .files import claim_run_dir, next_run_dir, write_json_atomic, write_text_atomic
from .errors import InputError
from .predict import csv_header, csv_row
from .synthetic import make_digit_domains

DEMO_BACKBONE = "test_resnet"
DEMO_ITERS = 1000
DEMO_PER_CLASS = 300
MIN_PER_CLASS = 5  # a held-out split and a batch of each domain
RESULT_FILE = "demo.json"  # what `--json` prints, kept beside the runs


def run_demo(out: str | Path | None, iters: int = DEMO_ITERS, device: str = "cpu", seed: int = 0,
             progress_factory: Callable = lambda: None, say: Callable[[str], None] = lambda s: None,
             per_class: int | None = None) -> dict[str, Any]:
    """Source-only against the default adaptation recipe on the built-in digits (the same data for
    every seed; `seed` seeds the training; `per_class` images of each digit and domain, default
    DEMO_PER_CLASS), then export and predict with the adapted model."""
    from .device import pick_device

    pick_device(device)  # an unavailable --device is refused before anything is written
    if out is None:
        root = next_run_dir("runs/demo")
    else:
        try:
            root = claim_run_dir(out, exist_ok=False, first_file=RESULT_FILE)
        except InputError as exc:
            raise InputError(exc.message, "pass another --out (the demo writes only into a new or empty folder)") from None
    try:
        return _demo(root, iters, device, seed, progress_factory, say, per_class or DEMO_PER_CLASS)
    except BaseException:
        # Everything in the folder is the demo's own (it was new or empty): a failed demo leaves none of it.
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if out is None:
            root.rmdir()
        raise


def _demo(root: Path, iters: int, device: str, seed: int, progress_factory: Callable, say: Callable[[str], None],
          per_class: int) -> dict[str, Any]:
    say(f"demo folder: {root}")
    say("generating two digit domains: small, thin glyphs (source, labeled) and larger, bolder ones (target, used unlabeled)")
    source, target = make_digit_domains(root / "data", per_class=per_class, size=32, seed=0)
    # No flips (a flipped digit is another digit) and no crops: the demo compares the methods, not augmentation.
    common = dict(
        source=str(source), target=str(target), backbone=DEMO_BACKBONE, pretrained=False, image_size=32, iters=iters,
        eval_dir=str(target), device=device, workers=0, min_crop=1.0, hflip=0.0, seed=seed, cache_images=True,
    )
    result: dict[str, Any] = {"data": {"source": str(source), "target": str(target)}, "seed": seed}
    for key, options in (("source_only", {"method": "source-only"}), ("adapted", {})):
        cfg = api.config(**common, **options)
        say(f"adapt --method {cfg.method}" + ("" if options else f" --domain-labels {cfg.domain_labels} (golabels' defaults)"))
        progress = progress_factory()
        try:
            summary = api.adapt(cfg, out=root / ("source-only" if options else "adapted"), progress=progress).summary
        finally:
            if progress is not None:
                progress.close()
        result[key] = {k: summary[k] for k in ("run_dir", "method", "domain_labels", "target_acc", "target_mean_class_acc", "seconds")}
        result[key]["recipe"] = {"trade_off": cfg.trade_off, "schedule": cfg.schedule, "bn_stats": cfg.bn_stats}
    result["gain"] = result["adapted"]["target_acc"] - result["source_only"]["target_acc"]

    say("golabels export --onnx, then golabels predict with the ONNX file on the target images")
    exported = api.export_onnx(result["adapted"]["run_dir"])
    result["export"] = {"onnx": exported.path, "max_abs_diff": exported.max_abs_diff}
    result["predict"] = _predict_to_csv(exported.path, target, root / "predictions.csv")
    write_json_atomic(root / RESULT_FILE, result)
    return result


def _predict_to_csv(onnx_path: str, target: Path, csv_path: Path) -> dict[str, Any]:
    """golabels predict's CSV of the target's images; its accuracy from their folder names."""
    lines, correct, rows = [csv_header(0)], 0, 0
    for label in api.predict(onnx_path, target, device="cpu", batch_size=64):
        lines.append(csv_row(label, label.classes, 0))
        correct += Path(label.path).parent.name == label.label
        rows += 1
    write_text_atomic(csv_path, "".join(lines))
    return {"csv": str(csv_path), "rows": rows, "target_acc": correct / max(rows, 1)}


def print_demo(result: dict[str, Any]) -> None:
    """The demo's result as a user reads it: both figures, the gain, what changed, where things are."""
    from .console import stdout

    so, ad = result["source_only"], result["adapted"]
    stdout.print(
        f"target accuracy on the demo's shifted domain: source-only {so['target_acc']:.3f}, "
        f"adapted ({ad['method']} + {ad['domain_labels']}) {ad['target_acc']:.3f} ({100 * result['gain']:+.1f} points)"
    )
    bn = (", and BatchNorm statistics re-estimated on those images before scoring and export (--bn-stats target)"
          if ad["recipe"].get("bn_stats") == "target" else "")
    stdout.print(f"what changed: the same network, data and schedule, plus {ad['method']}'s domain discriminator trained "
                 f"against the features on the unlabeled target images (adversarial weight {ad['recipe']['trade_off']:g}){bn}; "
                 "the target's labels were read only to score both runs")
    stdout.print(f"runs: {result['source_only']['run_dir']} and {result['adapted']['run_dir']}")
    stdout.print(f"exported {result['export']['onnx']} (max |probability difference| vs. PyTorch "
                 f"{result['export']['max_abs_diff']:.1e}); "
                 f"its predictions on the target: {result['predict']['csv']} ({result['predict']['rows']} rows, accuracy "
                 f"{result['predict']['target_acc']:.3f})")
    stdout.print(f"try:  golabels eval {result['adapted']['run_dir']} {result['data']['target']}")
    stdout.print(f"      golabels predict {result['export']['onnx']} {result['data']['target']} --top-k 2")
