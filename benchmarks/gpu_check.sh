#!/usr/bin/env bash
# The one-command GPU check: build the CUDA extension, run the CUDA tests,
# run compute-sanitizer on a small case, and print the GPU benchmark table.
# Logs and CSV go to $OUT (default ./gpu-check-out). Meant to finish in under
# 8 minutes on an H100; run it from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/fastffnn-extensions}"
export FASTFFNN_PTXAS_REPORT=1
PY="${PYTHON:-python}"
status=0
step() { echo; echo "=== $1 ($(date +%T))"; }

step "environment and build"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -m fastffnn > "$OUT/build_and_selfcheck.log" 2>&1 || status=1
grep -E "^(torch|GPU|kernels)|passed|failed|Error|error" "$OUT/build_and_selfcheck.log" | head -20
grep -E "spill|Used [0-9]+ registers" "$OUT/build_and_selfcheck.log" | sort | uniq -c | sort -rn | head -8

step "CUDA tests"
timeout 240 $PY -m pytest tests/test_cuda.py -q -x -p no:cacheprovider > "$OUT/cuda_tests.log" 2>&1 || status=1
tail -15 "$OUT/cuda_tests.log"

step "compute-sanitizer"
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 $PY benchmarks/sanitizer_case.py \
      > "$OUT/sanitizer_$tool.log" 2>&1 || status=1
    tail -3 "$OUT/sanitizer_$tool.log"
  done
else
  echo "compute-sanitizer not found: skipped"
fi

step "benchmark"
timeout 200 $PY benchmarks/bench_gpu.py --csv "$OUT/gpu_bench.csv" 2>&1 | tee "$OUT/gpu_bench.txt" | tail -45 || status=1
echo; echo "gpu_check status: $status"
exit $status
