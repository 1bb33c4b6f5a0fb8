#!/usr/bin/env bash
# One device call as a list of named steps, each the command behind a committed result
# (notes/scripts_moved.md says which run used which steps):
#
#   bash scripts/device_run.sh STEP[:ARG[:ARG2]] ...
#
#   bench:K1,K2          attn-numba bench --kernels K1,K2 --merge --out results/h200 (ceilings too)
#   bench_reuse:K1,K2    the same with ATTN_NUMBA_SCRATCH_REUSE=1 (reuse plans), no ceilings, into $R/reuse
#   long:K1,K2[:C]       attn-numba bench --long --kernels K1,K2 [--causal C], merged
#   flex_long:S1,S2      FlexAttention's long sweep, one process and time limit per length
#   first_call:K1,K2     scripts/first_call.py --runs 2 (cold, then warm disk cache; its JSON
#                        comes back in r/, to be merged into results/h200/first_call.json)
#   gpu_tests[:EXPR]     the GPU suites (tests/test_gpu*.py: forward, call path, backward,
#                        torch ops) [-k EXPR]
#   gpu_par[:LIMIT]      the same suites, one pytest process per file at once (and the gpu
#                        cases of every other test file): compiling
#                        dominates a fresh machine, and the host has 16 cores
#   breakdown_base       scripts/call_breakdown.py of the baseline tree carried in .baseline/
#                        (git archive of an earlier commit), for a before/after in one run
#   fwd_ab[:N]           scripts/fwd_timing.py of the baseline tree (.baseline/), then of this
#                        one, N rounds alternating (tags base1, new1, ...): flash_tc and
#                        flash_wgmma at the log's 10 configs, one run
#   bench_bwd:K1,K2[:S]  attn-numba bench --backward --kernels K1,K2 [--seq-lens S1,S2]
#                        --out results/h200 (bwd and fwd+bwd, gradients checked first)
#   bwd_check[:A,B]      scripts/gpu_bwd_check.py A B (backward sweep and timing; JSON in r/)
#   v6_check[:A,B]       scripts/gpu_v6_check.py A B (the warp-specialised kernel; JSON in r/)
#   ncu_v6[:A]           ncu (SpeedOfLight, scheduler, warp state, launch, occupancy,
#                        instruction mix) of
#                        scripts/ncu_v6.py A: v5, flash_ws variants and FA4, one call each
#   sass_v6[:A]          ncu SourceCounters of scripts/ncu_v6.py A, exported per SASS
#                        instruction (r/v6_sass.csv.gz); cubins' SASS needs no device:
#                        notes/v6_flash_ws.md says where cuobjdump comes from
#   breakdown            scripts/call_breakdown.py (host time per stage of a public call)
#   sanitize[:K1,K2]     compute-sanitizer memcheck, racecheck, synccheck, initcheck on
#                        scripts/sanitize.py (default: every forward and backward kernel)
#   sanitize_fwd:K1,K2   the same for forward kernels K1,K2 alone (no backward kernel)
#   sanitize_bwd:K1,K2   the same for backward kernels K1,K2 alone (no forward kernel)
#   bwd_tests            the wgmma backward's GPU tests and the torch ops' (autograd, compile,
#                        graphs: `auto` takes the wgmma backward on sm_90)
#   v6_tests             the flash_ws GPU tests: tests/test_v6_flash_ws.py and the GPU suites'
#                        flash_ws cases (-k flash_ws: calls, streams, graphs)
#   wgmma_check[:A,B]    scripts/gpu_wgmma_check.py A B (flash_wgmma microtest, sweeps, timing;
#                        JSON, PTX and SASS in r/wgmma/)
#   v4_check[:A,B]       scripts/gpu_check_v4.py A B (flash_tc checks and variants; JSON in r/)
#   package              python -m attn_numba.sources --package (the summary in the wheel)
#   notebooks            attn-numba notebooks --write (every notebook with outputs)
#
# END (default 560) bounds the whole call in seconds; every step gets its own limit, cut to
# what is left, and a hung Python step is killed with SIGABRT so that faulthandler prints
# where it was. The device returns only a few files, so everything comes back as
# $OUT/run.tgz (the logs, plus every file under results/, attn_numba/data/ and notebooks/
# that the steps wrote) and $OUT/run.log (the tail of each log).
set -u
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
R="$OUT/r"; mkdir -p "$R"; touch "$R/.start"
t0=$SECONDS; END=${END:-560}
say() { echo "[$((SECONDS - t0)) s] $*"; }
cap() { local l=$(( END - (SECONDS - t0) )); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
run() {  # run LOG LIMIT command...: bounded, output to $R/LOG.log (LOG_2.log, ... when a
         # step runs again in the same call), exit status appended
    local base=$1 log=$1 lim n=1; lim=$(cap "$2"); shift 2
    while [ -e "$R/$log.log" ]; do n=$((n + 1)); log="${base}_$n"; done
    say "$log (limit $lim s)"
    timeout -s ABRT "$lim" "$@" > "$R/$log.log" 2>&1; echo "rc $?" >> "$R/$log.log"
}
sanitizer() { command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1; }

STEPS=" bench bench_reuse long flex_long first_call gpu_tests gpu_par breakdown breakdown_base fwd_ab sanitize sanitize_fwd sanitize_bwd bwd_tests v6_tests wgmma_check v4_check package notebooks bench_bwd bwd_check v6_check ncu_v6 sass_v6 "
for spec in "$@"; do  # every step known before any runs
    [[ $STEPS == *" ${spec%%:*} "* ]] || { echo "unknown step ${spec%%:*}; steps:$STEPS"; exit 2; }
done
for spec in "$@"; do
    IFS=: read -r step a b <<< "$spec"
    list=${a//,/ }
    case $step in
        bench) run "bench" 300 python3 -m attn_numba.cli bench --kernels "$a" --merge \
                   --out results/h200 ;;
        bench_reuse) ATTN_NUMBA_SCRATCH_REUSE=1 run "bench_reuse" 300 python3 -m \
                         attn_numba.cli bench --kernels "$a" --no-ceilings --out "$R/reuse" ;;
        long) run "long_${a//,/-}${b:+_c$b}" 300 python3 -m attn_numba.cli bench --long \
                  --no-ceilings --out results/h200 --kernels "$a" ${b:+--causal "$b"} \
                  ${b:+--tag "c$b"} ;;
        flex_long) for S in $list; do
                       run "long_flex_$S" 200 python3 -m attn_numba.cli bench --long \
                           --no-ceilings --out results/h200 --kernels flexattention \
                           --seq-lens "$S" --tag "S$S"
                   done ;;
        first_call) OUT="$R" run first_call 90 python3 scripts/first_call.py \
                        --kernels $list --runs 2 ;;
        gpu_tests) ATTN_NUMBA_TEST_GPU=1 run pytest_gpu 330 python3 -m pytest -q \
                       -p no:cacheprovider -rs tests/test_gpu*.py ${a:+-k "$a"} ;;
        gpu_par) n=0
                 for files in tests/test_gpu.py tests/test_gpu_call_path.py tests/test_gpu_bwd.py \
                     tests/test_gpu_torch.py \
                     "-m gpu $(grep -l 'mark.gpu' tests/test_*.py | grep -v '^tests/test_gpu')"; do
                     n=$((n + 1))
                     # shellcheck disable=SC2086
                     ATTN_NUMBA_TEST_GPU=1 run "pytest_gpu$n" "${a:-330}" python3 -m pytest -q \
                         -p no:cacheprovider -rs $files &
                 done
                 wait ;;
        breakdown_base) OUT="$R/base" PYTHONPATH="/tmp/site:$PWD/.baseline" run \
                            call_breakdown_base 120 python3 .baseline/scripts/call_breakdown.py ;;
        fwd_ab) for i in $(seq "${a:-1}"); do  # rounds alternate base, new (noise shows)
                    OUT="$R" PYTHONPATH="/tmp/site:$PWD/.baseline" run fwd_timing_base$i 150 \
                        python3 scripts/fwd_timing.py --tag "base$i"
                    OUT="$R" run fwd_timing_new$i 150 python3 scripts/fwd_timing.py --tag "new$i"
                done ;;
        bench_bwd) run "bench_bwd_${a//,/-}" 300 python3 -m attn_numba.cli bench --backward \
                       --kernels "$a" ${b:+--seq-lens ${b//,/ }} --out results/h200 ;;
        bwd_check) OUT="$R" run bwd_check "${BWD_LIMIT:-200}" python3 scripts/gpu_bwd_check.py $list ;;
        v6_check) OUT="$R" run v6_check 340 python3 scripts/gpu_v6_check.py $list ;;
        ncu_v6) nc=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
                run ncu_v6 150 "$nc" --clock-control none --section SpeedOfLight \
                    --section SchedulerStats --section WarpStateStats --section LaunchStats \
                    --section Occupancy --section ComputeWorkloadAnalysis \
                    --section InstructionStats --csv \
                    python3 scripts/ncu_v6.py $list ;;
        sass_v6) nc=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
                 run sass_v6 200 "$nc" --clock-control none --section SourceCounters \
                     --section WarpStateStats -f -o "$R/v6src" python3 scripts/ncu_v6.py $list
                 run sass_v6_export 100 bash -c "'$nc' -i '$R/v6src.ncu-rep' --page source \
                     --csv --print-source sass | gzip > '$R/v6_sass.csv.gz'"
                 rm -f "$R/v6src.ncu-rep" ;;
        breakdown) OUT=results/h200 run call_breakdown 150 python3 scripts/call_breakdown.py ;;
        sanitize) cs=$(sanitizer)
                  for tool in memcheck racecheck synccheck initcheck; do
                      small=--small; [ "$tool" = memcheck ] && small=
                      run "sanitize_$tool" 150 "$cs" --tool "$tool" --error-exitcode 1 \
                          python3 scripts/sanitize.py ${list:+--kernels $list} $small
                  done ;;
        sanitize_fwd) cs=$(sanitizer)
                      for tool in memcheck racecheck synccheck initcheck; do
                          small=--small; [ "$tool" = memcheck ] && small=
                          run "sanitize_$tool" 150 "$cs" --tool "$tool" --error-exitcode 1 \
                              python3 scripts/sanitize.py --kernels $list --bwd-kernels $small
                      done ;;
        sanitize_bwd) cs=$(sanitizer)
                      for tool in memcheck racecheck synccheck initcheck; do
                          small=--small; [ "$tool" = memcheck ] && small=
                          run "sanitize_bwd_$tool" 150 "$cs" --tool "$tool" --error-exitcode 1 \
                              python3 scripts/sanitize.py --kernels --bwd-kernels $list $small
                      done ;;
        bwd_tests) ATTN_NUMBA_TEST_GPU=1 run pytest_bwd 240 python3 -m pytest -q \
                       -p no:cacheprovider -rs tests/test_gpu_bwd_wgmma.py tests/test_gpu_torch.py ;;
        v6_tests) ATTN_NUMBA_TEST_GPU=1 run pytest_v6 200 python3 -m pytest -q \
                      -p no:cacheprovider -rs tests/test_v6_flash_ws.py tests/test_gpu.py \
                      tests/test_gpu_call_path.py -k flash_ws ;;
        wgmma_check) OUT="$R/wgmma" run wgmma_check 160 python3 scripts/gpu_wgmma_check.py $list ;;
        v4_check) OUT="$R" run v4_check 200 python3 scripts/gpu_check_v4.py $list ;;
        package) run package 60 python3 -m attn_numba.sources --package ;;
        notebooks) run notebooks 300 python3 -m attn_numba.cli notebooks --write ;;
    esac
done
say done
find results attn_numba/data notebooks -type f -newer "$R/.start" > "$R/written.txt"
tar czf "$OUT/run.tgz" -C "$OUT" r -C "$PWD" -T "$R/written.txt"
for f in "$R"/*.log; do
    echo "=== $(basename "$f")"
    grep -v -i "warn" "$f" | grep -v "^Run:\|^\*\|^#\|^$\|^\`\|^|\|Host Frame" | tail -"${TAILN:-10}"
done | tee "$OUT/run.log"
rm -rf "$R"
