#!/usr/bin/env bash
# Issue 23: full fine-tuning against the frozen backbone, side by side in one run. Three recipes
# of the same backbone, each source-only and CDAN+E, over the tasks and seeds:
#
#   frozen       --freeze-backbone (cached ImageNet features; the bottleneck and head train)
#   batch-bn     full fine-tuning with the backbone's BatchNorm in train mode, trade-off 1 (golabels before issue 23)
#   frozen-bn    full fine-tuning with the backbone's BatchNorm statistics kept (--freeze-bn; the default since)
#
# On the CPU, the reduced task of benchmarks/RESULTS.md (Office-31 amazon -> webcam, 112 px, 300 iterations):
#
#     ROOT=/tmp/golabels-data WEIGHTS=../shared/weights/tf_efficientnet_lite0.in1k.safetensors OUT=/tmp/ft \
#       bash benchmarks/fine_tuning.sh
#
# On a GPU, the issue's full one (both directions, 224 px, 1000 iterations), cut at DEADLINE seconds:
#
#     ROOT=/data/office31 WEIGHTS=... OUT=$OUT/ft DEVICE=cuda SIZE=224 ITERS=1000 WORKERS=6 \
#       TASKS=amazon:webcam,webcam:amazon DEADLINE=480 bash benchmarks/fine_tuning.sh
#
# RECIPES picks some of them (RECIPES=frozen,frozen-bn); BACKBONE replaces the backbone (the tests
# run it with a tiny model, WEIGHTS=none for random init). Cells already finished are kept (uda.py
# resumes), so a cut run continues where it stopped; the tables hold the seeds that finished.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
: "${ROOT:?ROOT=folder with one sub-folder per domain}" "${WEIGHTS:?WEIGHTS=backbone weights, or none}" "${OUT:?OUT=folder for the runs}"
DEVICE=${DEVICE:-cpu} SIZE=${SIZE:-112} ITERS=${ITERS:-300} SEEDS=${SEEDS:-3} WORKERS=${WORKERS:-1}
TASKS=${TASKS:-amazon:webcam} BACKBONE=${BACKBONE:-tf_efficientnet_lite0} RECIPES=${RECIPES:-frozen,batch-bn,frozen-bn}
DEADLINE=${DEADLINE:-0} EVAL_EVERY=${EVAL_EVERY:-$ITERS} BATCH=${BATCH:-32}
if [ "$WEIGHTS" = none ]; then init=(--no-pretrained); else init=(--weights "$WEIGHTS"); fi

recipe_args() {
  case $1 in
    frozen) echo "--freeze-backbone" ;;
    batch-bn) echo "--set freeze-bn=false --set head-start=0 --set trade-off=1" ;;
    frozen-bn) echo "--set freeze-bn=true --set head-start=0" ;;
    *) echo "fine_tuning.sh: unknown recipe $1 (frozen, batch-bn, frozen-bn)" >&2; return 2 ;;
  esac
}

sweep() {  # recipe, extra uda.py arguments
  local recipe=$1; shift
  # shellcheck disable=SC2046
  $PY benchmarks/uda.py --root "$ROOT" --tasks "$TASKS" --methods source-only,cdan-e --domain-labels fixed --seeds "$SEEDS" \
    --backbone "$BACKBONE" "${init[@]}" --image-size "$SIZE" --iters "$ITERS" --batch-size "$BATCH" --eval-every "$EVAL_EVERY" --device "$DEVICE" \
    --workers "$WORKERS" --out "$OUT/$recipe" $(recipe_args "$recipe") "$@"
}

IFS=, read -ra recipes <<< "$RECIPES"
for r in "${recipes[@]}"; do recipe_args "$r" > /dev/null || exit 2; done
mkdir -p "$OUT"
status=0
# Seed by seed over the recipes, so that a deadline leaves whole seeds of every recipe; in the
# background, so that a signal to this script is handled at once (bash runs a trap only between
# foreground commands).
( for seed in $(seq "$SEEDS"); do for r in "${recipes[@]}"; do SEEDS=$seed sweep "$r" --quiet || exit 1; done; done ) \
  > "$OUT/sweep.log" 2>&1 &
pid=$!
stop_sweep() {  # the running uda.py saves its cell and exits 130, and the loop with it: no new cell starts
  pkill -TERM -P "$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null  # (no uda.py running: between two, the loop itself)
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  wait "$pid" 2>/dev/null
}
on_signal() {
  trap - TERM INT
  stop_sweep
  echo "fine_tuning.sh: stopped by $1; the running cell saved its state; run the same command again to resume" >&2
  exit 130
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
end=$((SECONDS + DEADLINE))
while kill -0 "$pid" 2>/dev/null && { [ "$DEADLINE" -eq 0 ] || (( SECONDS < end )); }; do sleep 1 & wait $!; done
if kill -0 "$pid" 2>/dev/null; then
  echo "== deadline ($DEADLINE s): stopping; unfinished cells are left out of the tables"
  stop_sweep
  status=1
else
  wait "$pid" || status=$?
fi
trap - TERM INT
for r in "${recipes[@]}"; do
  echo "== $r: $BACKBONE at $SIZE px, $ITERS iterations ($SECONDS s so far)"
  sweep "$r" --table-only --quiet
done
exit $status
