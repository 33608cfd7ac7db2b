#!/usr/bin/env bash
# Issue 8's GPU sweeps in one call, for a session lent a GPU: Office-31 both directions with full
# fine-tuning of tf_efficientnet_lite0 (source-only, dann, cdan-e; fixed and go), and MNIST -> USPS
# from scratch at a budget a CPU session cannot afford. Several benchmarks/uda.py processes share
# each sweep (one GPU, CPU cores for the loaders); cells run seed by seed, and whatever has finished
# at DEADLINE seconds is tabulated, so a sweep cut short still gives whole seeds.
#
#     OFFICE=/data/office31 DIGITS=/data/digits WEIGHTS=tf_efficientnet_lite0.in1k.safetensors \
#       RUNS=/tmp/gpu-sweeps bash benchmarks/gpu_sweeps.sh
#     DEVICE=cpu OFFICE_ITERS=2 DIGITS_ITERS=2 SEEDS=1 ... bash benchmarks/gpu_sweeps.sh   # a dry run on a CPU
#
# WEIGHTS=none trains the Office backbone from random init; OFFICE_BACKBONE, DIGITS_BACKBONE and
# OFFICE_SIZE replace the recipe's models and input size (the tests run the script that way).
#
# OFFICE holds amazon/ and webcam/, DIGITS mnist/ and usps/ (ImageFolder trees from ../shared/data).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
: "${OFFICE:?OFFICE=folder with amazon/ and webcam/}" "${DIGITS:?DIGITS=folder with mnist/ and usps/}" "${WEIGHTS:?WEIGHTS=lite0 weights}" "${RUNS:?RUNS=folder for the runs}"
DEVICE=${DEVICE:-cuda} SEEDS=${SEEDS:-3} DEADLINE=${DEADLINE:-450}
OFFICE_ITERS=${OFFICE_ITERS:-1000} DIGITS_ITERS=${DIGITS_ITERS:-4000}
OFFICE_BACKBONE=${OFFICE_BACKBONE:-tf_efficientnet_lite0} DIGITS_BACKBONE=${DIGITS_BACKBONE:-resnet10t}
if [ "$WEIGHTS" = none ]; then init=(--no-pretrained); else init=(--weights "$WEIGHTS"); fi
OFFICE_PROCS=${OFFICE_PROCS:-4} OFFICE_WORKERS=${OFFICE_WORKERS:-3} DIGITS_PROCS=${DIGITS_PROCS:-3}
DIGITS_METHODS=${DIGITS_METHODS:-source-only,dann,cdan-e}

office=(--root "$OFFICE" --tasks amazon:webcam,webcam:amazon --methods source-only,dann,cdan-e --domain-labels fixed,go
        --seeds "$SEEDS" --backbone "$OFFICE_BACKBONE" "${init[@]}" ${OFFICE_SIZE:+--image-size "$OFFICE_SIZE"} --iters "$OFFICE_ITERS" --device "$DEVICE"
        --workers "$OFFICE_WORKERS" --out "$RUNS/office")
digits=(--root "$DIGITS" --tasks mnist:usps --methods "$DIGITS_METHODS" --domain-labels fixed,go --seeds "$SEEDS"
        --backbone "$DIGITS_BACKBONE" --no-pretrained --image-size 32 --hflip 0 --min-crop 0.6 --iters "$DIGITS_ITERS"
        --device "$DEVICE" --workers 1 --out "$RUNS/digits")
mkdir -p "$RUNS/logs"
pids=()
for i in $(seq "$OFFICE_PROCS"); do $PY benchmarks/uda.py "${office[@]}" > "$RUNS/logs/office-$i.log" 2>&1 & pids+=($!); done
for i in $(seq "$DIGITS_PROCS"); do $PY benchmarks/uda.py "${digits[@]}" > "$RUNS/logs/digits-$i.log" 2>&1 & pids+=($!); done
stop_sweeps() {  # SIGTERM to this script's sweeps: each saves its running cell's state and exits
  kill $(jobs -rp) 2>/dev/null
  for _ in $(seq 30); do [ -z "$(jobs -rp)" ] && break; sleep 1; done
  [ -z "$(jobs -rp)" ] || kill -9 $(jobs -rp)
  wait
}
on_signal() {  # a signal to this script (bash runs a trap only between foreground commands: hence `sleep & wait`)
  trap - TERM INT
  stop_sweeps
  echo "gpu_sweeps.sh: stopped by $1; the running cells saved their state; run the same command again to resume" >&2
  exit 130
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
end=$((SECONDS + DEADLINE))
while (( SECONDS < end )) && [ -n "$(jobs -rp)" ]; do sleep 1 & wait $!; done
status=0
if [ -n "$(jobs -rp)" ]; then
  echo "== deadline ($DEADLINE s): stopping the sweeps; unfinished cells are left out of the tables"
  stop_sweeps
else
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done  # a sweep that failed on its own
fi
trap - TERM INT
echo "== Office-31, full fine-tuning of $OFFICE_BACKBONE, $OFFICE_ITERS iterations ($SECONDS s so far)"
$PY benchmarks/uda.py "${office[@]}" --table-only --quiet
echo "== MNIST -> USPS from scratch, $DIGITS_BACKBONE at 32 px, $DIGITS_ITERS iterations"
$PY benchmarks/uda.py "${digits[@]}" --table-only --quiet
grep -h "Error\|error" "$RUNS"/logs/*.log | sort | uniq -c | head -20
exit $status
