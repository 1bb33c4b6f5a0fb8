#!/usr/bin/env bash
# One device call: the long-sequence sweep (flash_tc, flash_wgmma, FlexAttention; 16k-512k
# tokens) merged into results/h200/summary.json run by run, the first call per kernel, and
# every notebook executed with outputs. Returned as $OUT/session6.tgz + $OUT/session6.log.
set -u
export PYTHONUNBUFFERED=1
R="$OUT/r"; mkdir -p "$R/nb"
t0=$SECONDS; END=${END:-570}
step() { echo "[$((SECONDS - t0)) s] $*"; }
left() { echo $(( END - (SECONDS - t0) )); }
lim() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
bench() {  # bench <log> <cap> args...
    local log=$1 cap=$2; shift 2
    step "bench $*"
    timeout "$(lim "$cap")" python3 -m attn_numba.cli bench --long --no-ceilings --out results/h200 "$@" \
        > "$R/$log.log" 2>&1; echo "rc $?" >> "$R/$log.log"
}
bench long_ours_c0 100 --kernels flash_tc,flash_wgmma --causal 0 --tag c0
bench long_ours_c1 100 --kernels flash_tc,flash_wgmma --causal 1 --tag c1
for S in 16384 65536 131072 262144 524288; do
    [ "$(left)" -gt 240 ] || { step "flex $S: no time left"; continue; }
    bench "long_flex_$S" $(( $(left) - 230 )) --kernels flexattention --seq-lens $S --tag S$S
done
python3 -m attn_numba.sources --package > "$R/package.log" 2>&1
step first_call
OUT="$R" timeout "$(lim 50)" python3 scripts/first_call.py --runs 2 > "$R/first_call.log" 2>&1
echo "rc $?" >> "$R/first_call.log"
step notebooks
timeout "$(lim 170)" python3 -m attn_numba.cli notebooks --write --out "$R/nb" > "$R/notebooks.log" 2>&1
echo "rc $?" >> "$R/notebooks.log"
step done
cp results/h200/summary.json results/h200/nvbench_long_* "$R/" 2>/dev/null
cp attn_numba/data/results/h200/summary.json "$R/package_summary.json" 2>/dev/null
tar czf "$OUT/session6.tgz" -C "$OUT" r
{
for f in "$R"/*.log; do
    echo "=== $(basename "$f")"; grep -v -i "warn" "$f" | grep -v "^\[bench\|^Run:\|^Pass:\|^\*\|^#\|^$\|^\`" | tail -${TAILN:-8}
done
} | tee "$OUT/session6.log"
rm -rf "$R"
