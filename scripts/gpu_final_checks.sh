#!/usr/bin/env bash
# One device call: the whole test suite on the GPU, then compute-sanitizer on every kernel.
# Usage (device): bash scripts/gpu_final_checks.sh "$OUT"
set -u
out=${1:-/tmp/out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 ATTN_NUMBA_TEST_GPU=1 ATTN_NUMBA_HYPOTHESIS_EXAMPLES=${EXAMPLES:-15}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
timeout ${PYTEST_S:-250} python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_kernels.py \
  tests/test_properties.py tests/test_api.py tests/test_v3_flash.py -s -k "not compiles_to_ptx" \
  > "$out/pytest_gpu.log" 2>&1; echo "pytest rc=$?" | tee -a "$out/pytest_gpu.log"
grep -E "allocated by the call|passed|failed" "$out/pytest_gpu.log" | tail -12
san="$out/sanitizer.log"; : > "$san"
for tool in memcheck racecheck synccheck initcheck; do
  small=""; [ "$tool" != memcheck ] && small="--small"
  echo "== $tool" | tee -a "$san"
  timeout $([ $tool = memcheck ] && echo 130 || ([ $tool = racecheck ] && echo 70 || echo 50)) compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize.py $small \
    >> "$san" 2>&1; echo "$tool rc=$?" | tee -a "$san"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitize.py:" "$san" | tail -2
done
