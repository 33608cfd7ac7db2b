#!/usr/bin/env bash
# Every GPU check and figure of golabels in one call, for a session lent a GPU (issue 5).
# Needs a CUDA GPU and python3 with torch, timm, typer, rich, onnx, onnxruntime (the lent machines
# have them); runs from the repository root without installing. About 5 minutes on one H100.
#
#     bash benchmarks/gpu.sh 2>&1 | tee gpu.log
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, timm, onnxruntime as o; print('torch', torch.__version__, '| timm', timm.__version__, '| onnxruntime', o.__version__, '|', torch.cuda.get_device_name())"

echo "== 1. the CUDA path end to end: demo (adapt with bf16, channels_last, fused SGD; eval; ONNX export; predict)"
$PY -m golabels_cli demo --device cuda --iters 200 --out "$WORK/demo" --json > "$WORK/demo.json" || status=1
$PY -c "import json; d = json.load(open('$WORK/demo.json')); print({k: d[k] for k in ('source_only', 'adapted', 'export', 'predict')})" || status=1

echo "== 2. resnet50 at 224 px, batch 32 + 32, synthetic inputs: figures (a)-(d), profile of one step"
$PY benchmarks/throughput.py --backbone resnet50 --image-size 224 --device cuda --steps 30 --warmup 5 --profile || status=1

echo "== 3. the same with --compile"
$PY benchmarks/throughput.py --backbone resnet50 --image-size 224 --device cuda --steps 30 --warmup 10 --compile || status=1

rm -rf "$WORK"
exit $status
