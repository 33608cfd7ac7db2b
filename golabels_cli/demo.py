"""`golabels demo`: the whole job on an embedded example — adapt, evaluate, export, predict — in two minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .checkpoint import claim_run_dir, next_run_dir, write_text_atomic
from .config import build_config
from .export import export_onnx
from .images import image_files
from .predict import csv_header, csv_row, open_predictor, predict_batches
from .synthetic import make_two_domains
from .train import adapt

DEMO_BACKBONE = "test_resnet"


def run_demo(out: str | Path | None, iters: int = 300, device: str = "cpu",
             progress_factory: Callable = lambda: None, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    root = claim_run_dir(out, exist_ok=False) if out else next_run_dir("runs/demo")
    say(f"demo folder: {root}")
    say("generating a two-domain shape image set (source: dark on light; target: colored on dark noise)")
    source, target = make_two_domains(root / "data", per_class=120, size=32, seed=0)
    common = dict(
        source=str(source), target=str(target), backbone=DEMO_BACKBONE, pretrained=False, image_size=32,
        iters=iters, batch_size=32, eval_dir=str(target), device=device, workers=0, min_crop=0.5, seed=0,
    )
    result: dict[str, Any] = {"data": {"source": str(source), "target": str(target)}}
    for key, method, labels in (("source_only", "source-only", "fixed"), ("adapted", "cdan-e", "go")):
        say(f"adapt --method {method} --domain-labels {labels}")
        progress = progress_factory()
        cfg = build_config({**common, "method": method, "domain_labels": labels})
        try:
            summary = adapt(cfg, out=root / method, progress=progress or (lambda kind, data: None))
        finally:
            if progress is not None:
                progress.close()
        result[key] = {k: summary[k] for k in ("run_dir", "method", "domain_labels", "target_acc", "target_mean_class_acc", "seconds")}

    say("golabels export --onnx, then golabels predict with the ONNX file on the target images")
    exported = export_onnx(result["adapted"]["run_dir"])
    result["export"] = {"onnx": exported.path, "max_abs_diff": exported.max_abs_diff}
    result["predict"] = _predict_to_csv(exported.path, target, root / "predictions.csv")
    return result


def _predict_to_csv(onnx_path: str, target: Path, csv_path: Path) -> dict[str, Any]:
    """Label the target folder with the ONNX model; its folder names give the demo's accuracy."""
    predictor = open_predictor(onnx_path, device="cpu")
    lines, correct, rows = [csv_header(0)], 0, 0
    for batch in predict_batches(predictor, (str(p) for p in image_files(target)), batch_size=64):
        for prediction in batch:
            lines.append(csv_row(prediction, predictor.classes, 0))
            correct += Path(prediction.path).parent.name == predictor.classes[int(prediction.probabilities.argmax())]
            rows += 1
    write_text_atomic(csv_path, "".join(lines))
    return {"csv": str(csv_path), "rows": rows, "target_acc": correct / max(rows, 1)}
