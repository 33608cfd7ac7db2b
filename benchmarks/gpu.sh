#!/usr/bin/env bash
# Every GPU check and figure of golabels in one call, for a session lent a GPU (issue 5).
# Needs a CUDA GPU and python3 with torch, timm, typer, rich, onnx, onnxruntime (the lent machines
# have them); runs from the repository root without installing. About 5 minutes on one H100.
#
#     bash benchmarks/gpu.sh 2>&1 | tee gpu.log
#     DEVICE=cpu BACKBONE=resnet10t SIZE=64 STEPS=2 bash benchmarks/gpu.sh    # a dry run of the script on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} BACKBONE=${BACKBONE:-resnet50} SIZE=${SIZE:-224} STEPS=${STEPS:-30} DEMO_ITERS=${DEMO_ITERS:-200}
WORK=$(mktemp -d)
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
$PY -c "import torch, timm, onnxruntime as o; print('torch', torch.__version__, '| timm', timm.__version__, '| onnxruntime', o.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

echo "== 1. the $DEVICE path end to end: demo (adapt with bf16, channels_last, fused SGD on CUDA; eval; ONNX export; predict)"
$PY -m golabels_cli demo --device "$DEVICE" --iters "$DEMO_ITERS" --out "$WORK/demo" --json > "$WORK/demo.json" || status=1
$PY -c "import json; d = json.load(open('$WORK/demo.json')); print({k: d[k] for k in ('source_only', 'adapted', 'export', 'predict')})" || status=1

echo "== 2. $BACKBONE at $SIZE px, batch 32 + 32, synthetic inputs: figures (a)-(d), profile of one step"
$PY benchmarks/throughput.py --backbone "$BACKBONE" --image-size "$SIZE" --device "$DEVICE" --steps "$STEPS" --warmup 5 --profile || status=1

echo "== 3. the same with --compile"
$PY benchmarks/throughput.py --backbone "$BACKBONE" --image-size "$SIZE" --device "$DEVICE" --steps "$STEPS" --warmup 10 --compile --figures ab || status=1

echo "== 4. data-parallel path (issue 6): plain single process vs. --devices 1, $BACKBONE at $SIZE px on the demo's images"
SRC=$($PY -c "import json; print(json.load(open('$WORK/demo.json'))['data']['source'])") TGT=$($PY -c "import json; print(json.load(open('$WORK/demo.json'))['data']['target'])")
for how in "" "--devices 1" "" "--devices 1"; do
  $PY -m golabels_cli adapt "$SRC" "$TGT" --backbone "$BACKBONE" --no-pretrained --image-size "$SIZE" --device "$DEVICE" --iters $((STEPS * 4)) \
    --log-every 10 --out "$WORK/ddp-$RANDOM" --quiet --json $how > "$WORK/ddp.json" || status=1
  $PY -c "import json; d = json.load(open('$WORK/ddp.json')); print('${how:-plain}'.ljust(12), d['images_per_s'], 'images/s', d['processes'], 'process(es)')" || status=1
done

rm -rf "$WORK"
exit $status
