#!/usr/bin/env bash
# One device call (round 3, run 13): flash_wgmma's warm first call after the load_cached fix,
# then FlexAttention's long-sequence sweep, one process and one time limit per length, each
# merged into results/h200/summary.json. A length that hangs is killed with SIGABRT so that
# Python's faulthandler prints where it was. Returned as $OUT/session7.tgz + $OUT/session7.log.
set -u
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
R="$OUT/r"; mkdir -p "$R"
t0=$SECONDS; END=${END:-560}
step() { echo "[$((SECONDS - t0)) s] $*"; }
left() { echo $(( END - (SECONDS - t0) )); }
lim() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
step first_call
OUT="$R" timeout "$(lim 60)" python3 scripts/first_call.py --kernels flash_wgmma flash_tc --runs 2 \
    > "$R/first_call.log" 2>&1; echo "rc $?" >> "$R/first_call.log"
for S in ${SEQS:-16384 65536 131072 262144 524288}; do
    [ "$(left)" -gt 30 ] || { step "flex $S: no time left"; continue; }
    step "flex $S"
    timeout -s ABRT "$(lim ${CAP:-150})" python3 -m attn_numba.cli bench --long --no-ceilings \
        --out results/h200 --kernels flexattention --seq-lens "$S" --tag "S$S" \
        > "$R/long_flex_$S.log" 2>&1; echo "rc $?" >> "$R/long_flex_$S.log"
done
step done
cp results/h200/summary.json results/h200/nvbench_long_flexattention_* "$R/" 2>/dev/null
tar czf "$OUT/session7.tgz" -C "$OUT" r
{
for f in "$R"/*.log; do
    echo "=== $(basename "$f")"; grep -v -i "warn" "$f" | grep -v "^Run:\|^\*\|^#\|^$\|^\`" | tail -${TAILN:-10}
done
} | tee "$OUT/session7.log"
rm -rf "$R"
