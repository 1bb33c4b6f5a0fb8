#!/usr/bin/env bash
# One device call: every GPU check of round 2 (flash_tc sweep + variants, flash_wgmma check,
# call-path GPU tests, host-time breakdown). Results under $OUT; a summary table last.
set -u
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
timeout 200 python3 scripts/gpu_check_v4.py > "$OUT/v4.log" 2>&1; echo "v4 rc $?" >> "$OUT/v4.log"
timeout 130 python3 scripts/gpu_wgmma_check.py --budget 110 > "$OUT/wgmma.log" 2>&1; echo "wgmma rc $?" >> "$OUT/wgmma.log"
ATTN_NUMBA_NO_WGMMA=1 ATTN_NUMBA_TEST_GPU=1 timeout 120 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gpu_call_path.py tests/test_call_path.py > "$OUT/pytest_call_path.log" 2>&1
echo "pytest rc $?" >> "$OUT/pytest_call_path.log"
ATTN_NUMBA_NO_WGMMA=1 timeout 60 python3 scripts/call_breakdown.py > "$OUT/call_breakdown.log" 2>&1
echo "breakdown rc $?" >> "$OUT/call_breakdown.log"
for f in v4 wgmma pytest_call_path call_breakdown; do echo "=== $f"; grep -v -i warn "$OUT/$f.log" | tail -22; done
