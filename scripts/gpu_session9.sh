#!/usr/bin/env bash
# One device call (round 3, run 15): FlexAttention at 16384 tokens (eager block mask, see
# FlexCase), then the packaged summary and every notebook executed with outputs from the
# final summary.json. Returned as $OUT/session9.tgz + $OUT/session9.log.
set -u
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
R="$OUT/r"; mkdir -p "$R/nb"
t0=$SECONDS; END=${END:-560}
step() { echo "[$((SECONDS - t0)) s] $*"; }
left() { echo $(( END - (SECONDS - t0) )); }
lim() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
for S in ${SEQS:-16384}; do
    step "flex $S"
    timeout -s ABRT "$(lim ${CAP:-200})" python3 -m attn_numba.cli bench --long --no-ceilings \
        --out results/h200 --kernels flexattention --seq-lens "$S" --tag "S$S" \
        > "$R/long_flex_$S.log" 2>&1; echo "rc $?" >> "$R/long_flex_$S.log"
done
python3 -m attn_numba.sources --package > "$R/package.log" 2>&1; echo "rc $?" >> "$R/package.log"
step notebooks
timeout "$(lim 300)" python3 -m attn_numba.cli notebooks --write --out "$R/nb" > "$R/notebooks.log" 2>&1
echo "rc $?" >> "$R/notebooks.log"
step done
cp results/h200/summary.json results/h200/nvbench_long_flexattention_* "$R/" 2>/dev/null
cp attn_numba/data/results/h200/summary.json "$R/package_summary.json" 2>/dev/null
tar czf "$OUT/session9.tgz" -C "$OUT" r
{
for f in "$R"/*.log; do
    echo "=== $(basename "$f")"; grep -v -i "warn" "$f" | grep -v "^Run:\|^\*\|^#\|^$\|^\`\|^|" | tail -${TAILN:-12}
done
} | tee "$OUT/session9.log"
rm -rf "$R"
