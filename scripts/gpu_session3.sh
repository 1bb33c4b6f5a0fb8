#!/usr/bin/env bash
# One device call (round 2, session 3): flash_wgmma check, flash_tc variants side by side with
# FlexAttention, and compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on flash_tc.
# Results under $OUT; a short summary last.
set -u
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
t0=$SECONDS
step() { echo "[$((SECONDS - t0)) s] $*"; }
step wgmma
timeout 150 python3 scripts/gpu_wgmma_check.py --budget 125 > "$OUT/wgmma.log" 2>&1
echo "wgmma rc $?" >> "$OUT/wgmma.log"
step v4 variants
ATTN_NUMBA_NO_WGMMA=1 timeout 170 python3 scripts/gpu_check_v4.py --no-correctness > "$OUT/v4.log" 2>&1
echo "v4 rc $?" >> "$OUT/v4.log"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
step "sanitizer at ${CS:-none}"
for tool in memcheck racecheck synccheck initcheck; do
    step "sanitizer $tool"
    extra=""; lim=45
    if [ "$tool" = memcheck ]; then lim=80; else extra="--small"; fi
    ATTN_NUMBA_NO_WGMMA=1 timeout $lim "$CS" --tool $tool --error-exitcode 1 \
        python3 scripts/sanitize.py --kernels flash_tc $extra > "$OUT/sanitize_$tool.log" 2>&1
    echo "sanitize $tool rc $?" >> "$OUT/sanitize_$tool.log"
done
step done
for f in wgmma v4 sanitize_memcheck sanitize_racecheck sanitize_synccheck sanitize_initcheck; do
    echo "=== $f"; grep -v -i "warn" "$OUT/$f.log" | tail -${TAILN:-14}
done
