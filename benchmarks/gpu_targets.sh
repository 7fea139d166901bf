#!/usr/bin/env bash
# Issues 12 and 13's GPU comparisons, for a second call of the GPU machine after gpu_check.sh, while it is warm
# (the build is then cached in .gpu-build/ and the first step takes seconds):
#
#   OUT=/path benchmarks/gpu_targets.sh              ($OUT defaults to ./gpu-targets-out)
#
#   step                                                                                 budget (s)
#   1. load the CPU + CUDA extension (FASTFFNN_BACKEND=cuda; builds it if gpu_check.sh has not)   120
#   2. issue 13: (300,100,2), batches 1 to 4096, training steps: eager, Adam(fused=True),         150
#      torch.compile(mode="reduce-overhead"), train_step (its automatic CUDA graphs) and fit
#   3. issue 12: widths 256/128/64 ((784,256,256,10) and (300,128,128,128,5) first), batches      250
#      1 to 65536: eager, Adam(fused=True), torch.compile, the drop-in and train_step
#
# Budgets sum to 520 s; each is a timeout that interrupts with SIGINT, and the benchmark writes its CSV point by
# point, so an interrupted step keeps the points it finished. Not yet run on a GPU: the budgets are estimates
# (torch.compile compiles afresh at each point, 4 + 16 times here).
# The ratios are in each table's "x peer" columns (peer time / this time) and in the CSVs' x_* columns.
# Exit status: 0 when every step finished, 1 when one was interrupted or failed, 2 without a GPU or a build.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-targets-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.gpu-build}"
export FASTFFNN_BACKEND=cuda
run_limited() { local seconds=$1; shift; timeout --signal=INT --kill-after=20 "$seconds" "$@"; }
status=0

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
  echo "gpu_targets: no GPU visible (nvidia-smi): nothing run"; exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/gpu.txt"

echo; echo "=== load the extension ($(date +%T))"
if ! run_limited 120 "$PY" -c "import fastffnn, fastffnn._build as b; fastffnn.ensure_loaded(); \
assert b.backend() == 'cuda', b.backend(); print('loaded:', b.loaded_library())" > "$OUT/build.log" 2>&1; then
  tail -20 "$OUT/build.log"; echo "gpu_targets: the CUDA extension did not load"; exit 2
fi
tail -1 "$OUT/build.log"

# bench NAME TIMEOUT ARGS...: one benchmark run, its table in $OUT/NAME.txt and its CSV in $OUT/NAME.csv
bench() {
  local name=$1 seconds=$2; shift 2
  echo; echo "=== $name ($(date +%T))"
  run_limited "$seconds" "$PY" -m fastffnn bench --device cuda --modes train --block-s 0.02 --blocks 5 \
    --csv "$OUT/$name.csv" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  cat "$OUT/$name.txt"
  [ $rc -eq 0 ] || { echo "--> $name: exit $rc (interrupted or failed; the CSV keeps the finished points)"; status=1; }
}

bench issue13 150 --shapes 300x100x2 --batches 1,32,1024,4096 \
  --impls eager,eager+fused,compile-ro,fastffnn-step,fastffnn-fit
bench issue12 250 --shapes 784x256x256x10,300x128x128x128x5,784x128x128x10,784x64x64x10 \
  --batches 1,32,1024,65536 --impls eager,eager+fused,compile,fastffnn,fastffnn-step

echo; echo "gpu_targets status: $status ($OUT)"
exit "$status"
