#!/usr/bin/env bash
# Every GPU figure of golabels in one call with a deadline, for a session lent a GPU (issues 5 and 27).
# Needs python3 with torch, timm, typer, rich, onnx, onnxruntime (the lent machines have them); runs
# from the repository root without installing. Writes $OUT/gpu.log (everything) and $OUT/results.md
# (the figures, the GPU and the versions); a section that would pass the deadline is skipped.
#
#     OUT=$OUT OFFICE=office31 WEIGHTS=lite0.safetensors DEADLINE=540 bash benchmarks/gpu.sh
#     DEVICE=cpu BACKBONES=test_resnet SIZE=32 BATCH=4 STEPS=1 ITERS=4 WORKERS=0 FIGURES=abfghj MAX_BATCH=8 \
#         DEMO_ITERS=2 OUT=/tmp/dry bash benchmarks/gpu.sh                 # the dry run the tests make on a CPU
#
# OFFICE: a folder holding Office-31's amazon/ and webcam/ (the end-to-end figure reads their JPEGs;
# without it, synthetic images). WEIGHTS: tf_efficientnet_lite0's timm weights, used for that backbone.
#
# Sections: (1) the demo end to end on $DEVICE; (2) benchmarks/throughput.py's figures for each of
# $BACKBONES: (a) adapt vs. supervised step, (b) Go-labels' cost, (f) golabels vs. a TLlib-style step,
# (g) peak memory and the largest batch, (h) predict on $DEVICE vs. the CPU, PyTorch and onnxruntime,
# (i) --compile, (j) JPEG decoding on the GPU vs. the CPU loader; (3) end to end: `golabels adapt` on
# the JPEG folders vs. the same run with the decoded images in memory (--cache-images); (4) the
# data-parallel path (--devices 1 vs. a plain run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} BACKBONES=${BACKBONES:-resnet50,tf_efficientnet_lite0} SIZE=${SIZE:-224} BATCH=${BATCH:-32}
STEPS=${STEPS:-30} ITERS=${ITERS:-300} DEMO_ITERS=${DEMO_ITERS:-200} FIGURES=${FIGURES:-abfghij} MAX_BATCH=${MAX_BATCH:-1024}
WORKERS=${WORKERS:-$(( $(nproc) > 8 ? 8 : $(nproc) - 1 ))} DEADLINE=${DEADLINE:-540} OFFICE=${OFFICE:-} WEIGHTS=${WEIGHTS:-}
E2E_BACKBONE=${E2E_BACKBONE:-${BACKBONES##*,}}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LOG=$OUT/gpu.log TABLE=$OUT/results.md WORK=$(mktemp -d)
started=$SECONDS status=0
: > "$LOG"

left() { echo $(( DEADLINE - (SECONDS - started) )); }

section() {  # section TITLE COMMAND...: run it within what is left of the deadline, into the log
  local title=$1
  shift
  if (( $(left) < 30 )); then
    echo "== $title: skipped, the deadline is near" | tee -a "$LOG" "$TABLE" >&2
    return 1
  fi
  echo "== $title" | tee -a "$LOG" >&2
  timeout "$(left)" "$@" 2> >(tee -a "$LOG" >&2) | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if (( rc != 0 )); then
    echo "   (exit $rc)" | tee -a "$LOG" >&2
    status=1
  fi
  return "$rc"
}

weights_for() { if [[ -n "$WEIGHTS" && "$1" == tf_efficientnet_lite0 ]]; then echo "--weights $WEIGHTS"; fi; }  # else: random init

{
  echo "# GPU figures: $(date -u +%F), $DEVICE"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/- GPU: /' || true
  $PY -c "import os, torch, timm, onnxruntime as o; print('- torch', torch.__version__, '| timm', timm.__version__, '| onnxruntime', o.__version__,
'| providers', ','.join(o.get_available_providers()), '|', os.cpu_count(), 'CPUs |', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  echo "- settings: size $SIZE, batch $BATCH + $BATCH, $STEPS timed steps, $WORKERS loader workers, end to end $ITERS iterations of $E2E_BACKBONE"
  echo
} > "$TABLE"
cat "$TABLE" >> "$LOG"

section "1. the demo end to end on $DEVICE (adapt, eval, ONNX export, predict)" \
  $PY -m golabels_cli demo --device "$DEVICE" --iters "$DEMO_ITERS" --out "$WORK/demo" --quiet --json > "$WORK/demo.json" \
  && $PY -c "import json; d = json.load(open('$WORK/demo.json')); print('demo:', {k: d[k]['target_acc'] for k in ('source_only', 'adapted')}, 'export', d['export']['max_abs_diff'])" | tee -a "$TABLE"

REAL=()
[[ -n "$OFFICE" ]] && REAL=(--real-dir "$OFFICE/webcam")
for backbone in ${BACKBONES//,/ }; do
  section "2. $backbone at $SIZE px, batch $BATCH + $BATCH: figures $FIGURES" \
    $PY benchmarks/throughput.py --backbone "$backbone" --image-size "$SIZE" --device "$DEVICE" --steps "$STEPS" --warmup 5 \
    --batch "$BATCH" --workers "$WORKERS" --figures "$FIGURES" --max-batch "$MAX_BATCH" $(weights_for "$backbone") "${REAL[@]}" \
    > "$WORK/figures.txt"
  grep -E '^\([a-j]\)' "$WORK/figures.txt" | sed "s/^/- $backbone /" >> "$TABLE"
done

if [[ -n "$OFFICE" ]]; then
  SRC=$OFFICE/amazon TGT=$OFFICE/webcam
else
  $PY -c "from golabels_cli.synthetic import make_two_domains; make_two_domains('$WORK/e2e', per_class=40, size=$SIZE, seed=0)"
  SRC=$WORK/e2e/source TGT=$WORK/e2e/target
fi
e2e() {  # e2e NAME [OPTIONS]: one adapt run on the folders; its summary in $WORK/NAME.json
  local name=$1
  shift
  local weights
  weights=$(weights_for "$E2E_BACKBONE")
  $PY -m golabels_cli adapt "$SRC" "$TGT" --backbone "$E2E_BACKBONE" ${weights:---no-pretrained} --image-size "$SIZE" \
    --device "$DEVICE" --iters "$ITERS" --batch-size "$BATCH" --workers "$WORKERS" --log-every 10 --save-every 0 \
    --out "$WORK/run-$name" --quiet --json "$@" > "$WORK/$name.json"
}
data_parallel() {  # a plain run and one through the DDP path with one process: the same images/s expected
  for how in plain "--devices 1"; do
    e2e "ddp-${how// /}" $([[ $how == plain ]] || echo "$how") || return 1
    $PY -c "import json; d = json.load(open('$WORK/ddp-${how// /}.json')); print('- data parallel, $how:', d['images_per_s'], 'images/s,', d['processes'], 'process(es)')"
  done
}
export PY SRC TGT E2E_BACKBONE SIZE DEVICE ITERS BATCH WORKERS WORK WEIGHTS
export -f e2e weights_for data_parallel

section "3. end to end: $E2E_BACKBONE on $SRC -> $TGT, JPEGs decoded by the loader vs. decoded once into memory" \
  bash -c 'e2e jpeg && e2e memory --cache-images' \
  && $PY - "$WORK" "$BATCH" <<'EOF' | tee -a "$TABLE"
import json, sys
work, batch = sys.argv[1], int(sys.argv[2])
jpeg, memory = (json.load(open(f"{work}/{name}.json")) for name in ("jpeg", "memory"))
rate = jpeg["images_per_s"]
print(f"- end to end ({jpeg['backbone']}, {jpeg['iters']} iterations): {rate} images/s from the JPEGs, {memory['images_per_s']} "
      f"with the images in memory: ratio {rate / memory['images_per_s']:.2f} (target >= 0.90: the loader keeps up); "
      f"10000 iterations of {batch} + {batch} take {10000 * 2 * batch / rate / 60:.0f} min at this rate")
EOF

section "4. the data-parallel path: a plain run vs. --devices 1" bash -c data_parallel >> "$TABLE"

echo "- total: $(( SECONDS - started )) s of the $DEADLINE s deadline; exit $status" >> "$TABLE"
cat "$TABLE"
rm -rf "$WORK"
exit $status
