#!/usr/bin/env bash
# One device call: flash_wgmma's variant sweeps and 8192-token timing, its GPU tests,
# compute-sanitizer on flash_wgmma and flash_tc, and the host-time breakdown of the call.
set -u
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
t0=$SECONDS
step() { echo "[$((SECONDS - t0)) s] $*"; }
step wgmma variants
timeout 160 python3 scripts/gpu_wgmma_check.py --budget 140 --skip-main-sweep > "$OUT/wgmma.log" 2>&1
echo "wgmma rc $?" >> "$OUT/wgmma.log"
(cd "$OUT" && tar czf wgmma_evidence.tgz *.ptx *.sass 2>/dev/null; rm -f *.ptx *.sass *.cubin)
step pytest flash_wgmma
ATTN_NUMBA_WGMMA=1 ATTN_NUMBA_TEST_GPU=1 timeout 100 python3 -m pytest -q -p no:cacheprovider \
    tests/test_gpu.py -k wgmma > "$OUT/pytest_wgmma.log" 2>&1
echo "pytest rc $?" >> "$OUT/pytest_wgmma.log"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck synccheck initcheck; do
    step "sanitizer $tool"
    ks="flash_wgmma"; extra="--small"; lim=40
    if [ "$tool" = memcheck ]; then ks="flash_tc flash_wgmma"; extra=""; lim=100; fi
    ATTN_NUMBA_WGMMA=1 timeout $lim "$CS" --tool $tool --error-exitcode 1 \
        python3 scripts/sanitize.py --kernels $ks $extra > "$OUT/sanitize_$tool.log" 2>&1
    echo "sanitize $tool rc $?" >> "$OUT/sanitize_$tool.log"
done
step breakdown
timeout 45 python3 scripts/call_breakdown.py > "$OUT/call_breakdown.log" 2>&1
echo "breakdown rc $?" >> "$OUT/call_breakdown.log"
step done
for f in wgmma pytest_wgmma sanitize_memcheck sanitize_racecheck sanitize_synccheck sanitize_initcheck call_breakdown; do
    echo "=== $f"; grep -v -i "warn" "$OUT/$f.log" | grep -v "Host Frame" | tail -${TAILN:-16}
done
