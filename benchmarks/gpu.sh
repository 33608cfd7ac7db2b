#!/usr/bin/env bash
# Every GPU figure of golabels in one device call (issues 5, 27 and 43): about six minutes on an
# H100/H200, every section with its own time cap, so that a slow one cannot starve the others.
# Needs python3 with torch, timm, typer, rich, onnx, onnxruntime (the lent machines have them); runs
# from the repository root without installing. Writes $OUT/gpu.log (everything) and $OUT/results.md
# (the figures, the GPU and the versions); a section that reaches its cap keeps the lines it printed.
#
#     OUT=$OUT OFFICE=office31 WEIGHTS=lite0.safetensors bash benchmarks/gpu.sh
#     DEVICE=cpu BACKBONES=test_resnet SIZE=32 BATCH=4 STEPS=1 ITERS=4 DDP_ITERS=2 WORKERS=0 MAX_BATCH=8 DEMO_ITERS=2 DEMO_PER_CLASS=5 \
#         COMPILE_MODES=default CAP_SCALE=4 OUT=/tmp/dry bash benchmarks/gpu.sh      # the dry run the tests make on a CPU
#
# OFFICE: a folder holding Office-31's amazon/ and webcam/ (the end-to-end and loader figures read
# their JPEGs; without it, synthetic images). WEIGHTS: tf_efficientnet_lite0's timm weights, used for
# that backbone.
#
# Sections and their caps in seconds (CAP_SCALE multiplies them all; they sum to 355):
#   1. the demo end to end on $DEVICE                                                         30
#   2. benchmarks/throughput.py for each of $BACKBONES (resnet50 and lite0 by default):
#      (a) adapt vs. supervised step, (b) Go-labels' cost, (f) golabels vs. a TLlib-style step   35 each
#      (g) peak memory and the largest batch (no new size tried after G_SECONDS)                  20 each
#      (i) torch.compile in each of $COMPILE_MODES (reduce-overhead: CUDA graphs) vs. eager       45 each
#      (h) predict on $DEVICE vs. the CPU, PyTorch and onnxruntime (the last backbone)            25
#      (l) the training loader's CPU ms per image: per-image from JPEGs, from memory, batched    20
#   3. end to end: `golabels adapt` with --augment per-image from the JPEGs vs. batched          45
#   4. the data-parallel path (--devices 1 vs. a plain run)                                       35
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} BACKBONES=${BACKBONES:-resnet50,tf_efficientnet_lite0} SIZE=${SIZE:-224} BATCH=${BATCH:-32}
STEPS=${STEPS:-20} ITERS=${ITERS:-150} DDP_ITERS=${DDP_ITERS:-100} DEMO_ITERS=${DEMO_ITERS:-200} DEMO_PER_CLASS=${DEMO_PER_CLASS:-300}
MAX_BATCH=${MAX_BATCH:-1024}
G_SECONDS=${G_SECONDS:-10} COMPILE_MODES=${COMPILE_MODES:-default,reduce-overhead} CAP_SCALE=${CAP_SCALE:-1}
WORKERS=${WORKERS:-$(( $(nproc) > 8 ? 8 : $(nproc) - 1 ))} OFFICE=${OFFICE:-} WEIGHTS=${WEIGHTS:-}
E2E_BACKBONE=${E2E_BACKBONE:-${BACKBONES##*,}}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LOG=$OUT/gpu.log TABLE=$OUT/results.md WORK=$(mktemp -d)
started=$SECONDS status=0
: > "$LOG"

section() {  # section CAP TITLE COMMAND...: run it for at most CAP x CAP_SCALE seconds, into the log
  local cap=$(( $1 * CAP_SCALE )) title=$2
  shift 2
  local begun=$SECONDS
  echo "== $title (cap $cap s)" | tee -a "$LOG" >&2
  timeout -k 5 "$cap" "$@" 2> >(tee -a "$LOG" >&2) | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if (( rc == 124 || rc == 137 )); then
    echo "   ($title: reached its cap of $cap s; the lines it printed are kept)" | tee -a "$LOG" "$TABLE" >&2
    status=1
  elif (( rc != 0 )); then
    echo "   ($title: exit $rc)" | tee -a "$LOG" "$TABLE" >&2
    status=1
  fi
  echo "   ($(( SECONDS - begun )) s)" >> "$LOG"
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

section 30 "1. the demo end to end on $DEVICE (adapt, eval, ONNX export, predict)" \
  $PY -m golabels_cli demo --device "$DEVICE" --iters "$DEMO_ITERS" --per-class "$DEMO_PER_CLASS" --out "$WORK/demo" --quiet --json > "$WORK/demo.json" \
  && $PY -c "import json; d = json.load(open('$WORK/demo.json')); print('demo:', {k: d[k]['target_acc'] for k in ('source_only', 'adapted')}, 'export', d['export']['max_abs_diff'])" | tee -a "$TABLE"

REAL=()
[[ -n "$OFFICE" ]] && REAL=(--real-dir "$OFFICE/webcam")
figures() {  # figures CAP BACKBONE LETTERS: throughput.py's figures, their lines into the table
  local cap=$1 backbone=$2 letters=$3
  section "$cap" "2. $backbone at $SIZE px, batch $BATCH + $BATCH: figures $letters" \
    $PY benchmarks/throughput.py --backbone "$backbone" --image-size "$SIZE" --device "$DEVICE" --steps "$STEPS" --warmup 3 \
    --batch "$BATCH" --workers "$WORKERS" --figures "$letters" --max-batch "$MAX_BATCH" --g-seconds "$G_SECONDS" \
    --compile-modes "$COMPILE_MODES" $(weights_for "$backbone") "${REAL[@]}" > "$WORK/figures.txt"
  grep -E '^\([a-l]\)' "$WORK/figures.txt" | sed "s/^/- $backbone /" >> "$TABLE"
}
for backbone in ${BACKBONES//,/ }; do
  figures 35 "$backbone" abf
  figures 20 "$backbone" g
  figures 45 "$backbone" i
done
figures 25 "$E2E_BACKBONE" h
figures 20 "$E2E_BACKBONE" l

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
    ITERS=$DDP_ITERS e2e "ddp-${how// /}" $([[ $how == plain ]] || echo "$how") || return 1
    $PY -c "import json; d = json.load(open('$WORK/ddp-${how// /}.json')); print('- data parallel, $how:', d['train_images_per_s'], 'images/s in its steps,', d['processes'], 'process(es)')"
  done
}
export PY SRC TGT E2E_BACKBONE SIZE DEVICE ITERS DDP_ITERS BATCH WORKERS WORK WEIGHTS
export -f e2e weights_for data_parallel

section 45 "3. end to end: $E2E_BACKBONE on $SRC -> $TGT, --augment per-image from the JPEGs vs. batched" \
  bash -c 'e2e jpeg --augment per-image && e2e batched' \
  && $PY - "$WORK" "$BATCH" <<'EOF' | tee -a "$TABLE"
import json, sys
work, batch = sys.argv[1], int(sys.argv[2])
jpeg, batched = (json.load(open(f"{work}/{name}.json")) for name in ("jpeg", "batched"))
def rates(d):
    return f"{d['train_images_per_s']} images/s in its steps ({d['images_per_s']} over the run, {d['eval_seconds']} s evaluating)"
print(f"- end to end ({jpeg['backbone']}, {jpeg['iters']} iterations): per-image from the JPEGs {rates(jpeg)}; batched {rates(batched)}: "
      f"ratio {batched['train_images_per_s'] / jpeg['train_images_per_s']:.2f}; "
      f"10000 iterations of {batch} + {batch} take {10000 * 2 * batch / batched['train_images_per_s'] / 60:.0f} min at the batched rate")
EOF

section 35 "4. the data-parallel path: a plain run vs. --devices 1" bash -c data_parallel >> "$TABLE"

echo "- total: $(( SECONDS - started )) s (caps sum to $(( 355 * CAP_SCALE )) s); exit $status" >> "$TABLE"
cat "$TABLE"
rm -rf "$WORK"
exit $status
