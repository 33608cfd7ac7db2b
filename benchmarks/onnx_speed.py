"""ONNX export of a real backbone: verification and CPU inference speed, onnxruntime vs. PyTorch.

Builds a golabels classifier on the backbone (pretrained from --weights, or random init; the
bottleneck and head are random, the head scaled so that probabilities are peaked as a trained
model's are: export and speed don't depend on what the weights learned), saves it the way a run
does, exports it with `golabels.export_onnx` (which verifies it), then times PyTorch
eval and onnxruntime on the same batch, alternating, on this machine's CPU.

    python benchmarks/onnx_speed.py --backbone tf_efficientnet_lite0 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --images /tmp/golabels-data/webcam
    python benchmarks/onnx_speed.py --backbone resnet50 --images /tmp/golabels-data/webcam

--images is a labeled folder (e.g. Office-31 webcam): its classes name the head, and verification
and timing run on its images instead of random inputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml

from golabels import export_onnx
from golabels.hooks import Classifier, ModelInfo, create_backbone, resolve_data_config, save_model, verification_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--weights", help="local timm state dict; default: random init")
    parser.add_argument("--images", help="labeled folder for class names, verification and timing inputs")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--logit-std", type=float, default=5.0,
                        help="scale the random head so the batch's logits have this spread (0: leave it); "
                             "a random head gives near-uniform probabilities, which would hide export errors")
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, pretrained=False, weights=args.weights)
    data_config = resolve_data_config(backbone, args.image_size)
    classes = sorted(p.name for p in Path(args.images).iterdir() if p.is_dir()) if args.images else [f"c{i:02d}" for i in range(31)]
    model = Classifier(backbone, len(classes)).eval()
    info = ModelInfo(args.backbone, classes, data_config, 256, "source-only", "fixed")

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        if args.images:
            (run / "config.yaml").write_text(yaml.safe_dump({"source": str(Path(args.images).resolve())}))
        x, described = verification_batch(run / "model.safetensors", info, args.batch)
        if args.logit_std > 0:
            with torch.inference_mode():
                spread = float(model(torch.from_numpy(x))[0].std())
                model.head.weight.mul_(args.logit_std / spread)
                model.head.bias.mul_(args.logit_std / spread)
        save_model(model, info, run / "model.safetensors")
        result = export_onnx(run)
        session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])

        def run_torch() -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x))[0].softmax(1).numpy()

        def run_ort() -> np.ndarray:
            return session.run(["probabilities"], {"input": x})[0]

        diff = float(np.abs(run_torch() - run_ort()).max())  # also the warm-up of both
        with torch.inference_mode():
            torch_logits = model(torch.from_numpy(x))[0].numpy()
        logit_diff = float(np.abs(torch_logits - session.run(["logits"], {"input": x})[0]).max())
        logit_scale = float(np.abs(torch_logits).max())
        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.reps):
            for name, fn in (("pytorch", run_torch), ("onnxruntime", run_ort)):
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)

    pt, ox = statistics.median(times["pytorch"]), statistics.median(times["onnxruntime"])
    print(f"backbone {args.backbone} ({'weights ' + args.weights if args.weights else 'random init'}), "
          f"input {data_config['input_size']}, {len(classes)} classes, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    print(f"export: {result.bytes / 1e6:.1f} MB, opset {result.opset}, {result.seconds:.1f}s; "
          f"verify max |probability diff| {result.max_abs_diff:.2e} on {result.verified_on}")
    print(f"batch {args.batch} on {described}: max |probability diff| {diff:.2e}, max |logit diff| {logit_diff:.2e} "
          f"(largest |logit| {logit_scale:.2f}, largest probability {float(run_ort().max()):.3f})")
    print(f"CPU inference, median of {args.reps}: PyTorch {pt * 1000:.0f} ms ({args.batch / pt:.1f} img/s), "
          f"onnxruntime {ox * 1000:.0f} ms ({args.batch / ox:.1f} img/s); onnxruntime/PyTorch throughput ratio {pt / ox:.2f}")


if __name__ == "__main__":
    main()
