#!/usr/bin/env bash
# One device call: flash_wgmma's variants timed at 8192 tokens, the tensor-core kernels and both
# peers benchmarked side by side (merged into the H200 summary), the long-sequence sweep of our
# kernels, the call-path GPU tests, the host-time breakdown and memcheck. Everything lands in
# $OUT/session5.tgz (the device returns few files) plus $OUT/session5.log.
set -u
export PYTHONUNBUFFERED=1
R="$OUT/r"; mkdir -p "$R/h200"
cp results/h200/summary.json "$R/h200/summary.json"
t0=$SECONDS; END=${END:-575}
step() { echo "[$((SECONDS - t0)) s] $*"; }
lim() { local l=$(( END - (SECONDS - t0) )); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo $l; }
step wgmma timing
OUT="$R" timeout "$(lim 55)" python3 scripts/gpu_wgmma_check.py --stage timing \
    --stage-args '{"v_swap": false}' > "$R/wgmma_timing.log" 2>&1; echo "rc $?" >> "$R/wgmma_timing.log"
step bench
timeout "$(lim 235)" python3 -m attn_numba.cli bench --kernels flash_tc,flash_wgmma,flexattention,sdpa \
    --merge --out "$R/h200" > "$R/bench.log" 2>&1; echo "rc $?" >> "$R/bench.log"
step long
timeout "$(lim 160)" python3 -m attn_numba.cli bench --long --kernels flash_tc,flash_wgmma --no-ceilings \
    --out "$R/h200" > "$R/long_ours.log" 2>&1; echo "rc $?" >> "$R/long_ours.log"
step pytest
ATTN_NUMBA_TEST_GPU=1 timeout "$(lim 80)" python3 -m pytest -q -p no:cacheprovider \
    tests/test_gpu_call_path.py tests/test_gpu.py -k "wgmma or call_path" > "$R/pytest_call_path.log" 2>&1; echo "rc $?" >> "$R/pytest_call_path.log"
step breakdown
OUT="$R" timeout "$(lim 40)" python3 scripts/call_breakdown.py > "$R/call_breakdown.log" 2>&1
echo "rc $?" >> "$R/call_breakdown.log"
step memcheck
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout "$(lim 40)" "$CS" --tool memcheck --error-exitcode 1 python3 scripts/sanitize.py --small \
    --kernels flash_tc flash_wgmma > "$R/sanitize_memcheck.log" 2>&1; echo "rc $?" >> "$R/sanitize_memcheck.log"
step done
tar czf "$OUT/session5.tgz" -C "$OUT" r
{
for f in wgmma_timing bench long_ours pytest_call_path call_breakdown sanitize_memcheck; do
    echo "=== $f"; grep -v -i "warn" "$R/$f.log" | grep -v "Host Frame\|^\[bench\|^Run:\|^Pass:" | tail -${TAILN:-14}
done
} | tee "$OUT/session5.log"
rm -rf "$R"
