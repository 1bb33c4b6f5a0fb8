#!/usr/bin/env bash
# One device call (round 3, run 14): the first call of flash_wgmma and flash_tc after the
# disk-cache key fix (attn_numba.kernels.ptx.fixed_intrinsic), FlexAttention at 16384 tokens
# (its inductor compile now in-process), then the GPU test suites on this commit.
# Returned as $OUT/session8.tgz + $OUT/session8.log.
set -u
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
R="$OUT/r"; mkdir -p "$R"
t0=$SECONDS; END=${END:-560}
step() { echo "[$((SECONDS - t0)) s] $*"; }
left() { echo $(( END - (SECONDS - t0) )); }
lim() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
git log --oneline -1
step first_call
OUT="$R" timeout "$(lim 60)" python3 scripts/first_call.py --kernels flash_wgmma flash_tc --runs 2 \
    > "$R/first_call.log" 2>&1; echo "rc $?" >> "$R/first_call.log"
for S in ${SEQS:-16384}; do
    step "flex $S"
    timeout -s ABRT "$(lim ${CAP:-170})" python3 -m attn_numba.cli bench --long --no-ceilings \
        --out results/h200 --kernels flexattention --seq-lens "$S" --tag "S$S" \
        > "$R/long_flex_$S.log" 2>&1; echo "rc $?" >> "$R/long_flex_$S.log"
done
step pytest
ATTN_NUMBA_TEST_GPU=1 timeout -s ABRT "$(lim 330)" python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_gpu_call_path.py tests/test_gpu.py > "$R/pytest_gpu.log" 2>&1
echo "rc $?" >> "$R/pytest_gpu.log"
step done
cp results/h200/summary.json results/h200/nvbench_long_flexattention_* "$R/" 2>/dev/null
tar czf "$OUT/session8.tgz" -C "$OUT" r
{
for f in "$R"/*.log; do
    echo "=== $(basename "$f")"; grep -v -i "warn" "$f" | grep -v "^Run:\|^\*\|^#\|^$\|^\`\|^|" | tail -${TAILN:-12}
done
} | tee "$OUT/session8.log"
rm -rf "$R"
