#!/usr/bin/env bash
# `make bench`: boots the test VM under QEMU -icount shift=0,sleep=off (guest
# time = guest instructions, 1 ns each), runs the lmbench-style suite
# (tests/bench/lmbench.c, driven by tests/bench/run.sh) natively, then with
# the kernel translated by kdbt, then translated with the count client and
# with the coverage client (docs/clients.md), in the same boot, and prints
# one row per benchmark: native ns/op, then for each translated pass its
# ns/op, its ratio to native and kdbt dispatcher entries per op; then the
# geometric-mean ratios, one line per pass ("geomean ratio translated/native
# (12 of 12 benchmarks): 1.91", then "geomean ratio count/native: 2.10" and
# "geomean ratio coverage/native: 1.95"). See docs/bench.md.
# Environment: KDBT_BENCH_SCALE (iteration-count percent, default 100),
# KDBT_BENCH_PASSES (translated passes in the same boot, default 1; each extra
# pass adds a column group), KDBT_VM_TIMEOUT (seconds, default 900),
# KDBT_BENCH_LOG (print the table of an earlier run's console log; no boot),
# KDBT_BENCH_WALL=R (TCG wall time instead: no -icount, R rounds of a native
# and a translated pass in one boot, per benchmark the median of each, then
# "geomean ratio translated/native (wall time, median of R): X"; no clients).
# Exit status: non-zero if the VM or a pass failed, the kernel oopsed or
# warned, or a benchmark is missing from a result set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
log="$KDBT_BUILD/vm/bench-console.log"
scale="${KDBT_BENCH_SCALE:-100}"
passes="${KDBT_BENCH_PASSES:-1}"
[[ "$scale" =~ ^[1-9][0-9]*$ ]] || die "KDBT_BENCH_SCALE must be a positive integer (percent), got '$scale'"
[[ "$passes" =~ ^[1-9][0-9]?$ ]] || die "KDBT_BENCH_PASSES must be 1..99, got '$passes'"
wall="${KDBT_BENCH_WALL:-0}"
[[ "$wall" =~ ^[0-9]$ ]] || die "KDBT_BENCH_WALL must be 0..9 (rounds), got '$wall'"
BENCHES=(null_syscall read_devnull write_devnull open_close stat pipe_rtt unix_rtt
         fork_exit fork_exec page_fault mmap_munmap signal)
# Measured and shown, but outside the geometric mean: the cost of a code
# change (kdbt's invalidation and re-translation), not of running code.
EXTRA=(static_key_flip)
PASSES=(translated)
for ((i = 2; i <= passes; i++)); do PASSES+=("translated$i"); done
# The client passes, after the translated ones.
CLIENTS=(count coverage)

if [ -n "${KDBT_BENCH_LOG:-}" ]; then
    # Re-read an earlier run's console log instead of booting.
    log="$KDBT_BENCH_LOG"; vmrc=0
    [ -r "$log" ] || die "cannot read $log"
    passes="$(tr -d '\r' <"$log" | grep -c '=== kdbt bench translated[0-9]* (' || true)"
    PASSES=(translated)
    for ((i = 2; i <= passes; i++)); do PASSES+=("translated$i"); done
    # A log from before the client passes has none.
    found=()
    for c in "${CLIENTS[@]}"; do
        if tr -d '\r' <"$log" | grep -c "=== kdbt bench $c (" >/dev/null; then found+=("$c"); fi
    done
    CLIENTS=("${found[@]}")
else
    # The module is built from the working tree; say which tree the figures belong to.
    ko="$("$here/module.sh")"
    dirty="$(cd "$KDBT_ROOT" && git status --porcelain -- src/module Kbuild 2>/dev/null | wc -l)"
    echo "kdbt.ko $(sha256sum "$ko" | cut -c1-12) from $(cd "$KDBT_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s) under src/module")"
    start=$(date +%s)
    set +e
    icount=(-icount shift=0,sleep=off)
    [ "$wall" -gt 0 ] && icount=()
    KDBT_APPEND="quiet kdbt.bench_scale=$scale kdbt.bench_passes=$passes kdbt.bench_wall=$wall ${KDBT_APPEND:-}" KDBT_QUIET=1 \
        "$here/vm.sh" bench "$log" "${KDBT_VM_TIMEOUT:-900}" "${icount[@]}"
    vmrc=$?
    set -e
    echo "VM wall time: $(( $(date +%s) - start )) s"
fi
clean="$(tr -d '\r' <"$log")"

# Lines of one pass between its two markers. Markers are matched anywhere in a
# line: the first one follows the firmware's screen-clearing escapes.
section() {
    awk -v pass="$1" '
        index($0, "=== kdbt bench " pass " end ===") { on = 0 }
        on { print }
        index($0, "=== kdbt bench " pass " (") { on = 1 }' <<<"$clean"
}
# "name value" result lines of one pass, and one value from them.
results() { section "$1" | grep -E '^[a-z_]+ [0-9]+(\.[0-9]+)?$' || true; }
value() { awk -v b="$2" '$1 == b { print $2; exit }' <<<"$1"; }
entries() { section "$1" | awk -v b="$2" '$1 == "#kdbt" && $2 == b { print $4; exit }'; }

bad=0
[ "$vmrc" -eq 0 ] || { echo "bench: VM exited with status $vmrc"; bad=1; }
if grep -E 'kdbt-bench: FAIL|lmbench: FAIL' <<<"$clean"; then bad=1; fi
if grep -E 'Oops|BUG:|WARNING:|Kernel panic|general protection fault|RIP:' <<<"$clean"; then
    echo "bench: kernel oops/WARN in the console log"; bad=1
fi
grep -q '=== kdbt bench done ===' <<<"$clean" || { echo "bench: guest run did not finish"; bad=1; }

if [ "$wall" -gt 0 ]; then
    # Per benchmark and mode, the median of the rounds' ns/op.
    median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
    printf '%-14s %11s %11s %7s\n' benchmark native translated ratio
    logsum=0; n=0
    for b in "${BENCHES[@]}" "${EXTRA[@]}"; do
        [ "$b" = "${EXTRA[0]}" ] && echo "-- code changes (not in the geomean):"
        for mode in native translated; do
            vals=
            for ((r = 1; r <= wall; r++)); do
                m=$mode; [ $r -gt 1 ] && m=$mode$r
                vals+="$(value "$(results "$m")" "$b")"$'\n'
            done
            declare "med_$mode=$(grep . <<<"$vals" | median)"
        done
        if [ -z "$med_native" ] || [ -z "$med_translated" ]; then
            printf '%-14s %11s %11s %7s\n' "$b" "${med_native:-MISSING}" "${med_translated:-MISSING}" -; bad=1; continue
        fi
        awk -v b="$b" -v a="$med_native" -v t="$med_translated" 'BEGIN { printf "%-14s %11s %11s %7.2f\n", b, a, t, t / a }'
        [[ " ${EXTRA[*]} " == *" $b "* ]] && continue
        logsum="$(awk -v s="$logsum" -v a="$med_native" -v t="$med_translated" 'BEGIN { printf "%.12f", s + log(t / a) }')"
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] && awk -v s="$logsum" -v n="$n" -v r="$wall" 'BEGIN { printf "geomean ratio translated/native (wall time, median of %d): %.2f\n", r, exp(s / n) }'
    echo "(ns/op = guest clock, TCG wall time, no -icount; medians of $wall alternating native/translated rounds)"
    echo "console log: $log"
    exit "$bad"
fi
native="$(results native)"
declare -A res logsum count
for p in "${PASSES[@]}" "${CLIENTS[@]}"; do res[$p]="$(results "$p")"; logsum[$p]=0; count[$p]=0; done

header="$(printf '%-14s %11s' benchmark native)"
for p in "${PASSES[@]}" "${CLIENTS[@]}"; do header+="$(printf ' %13s %7s %8s' "$p" ratio disp/op)"; done
echo "$header"
for b in "${BENCHES[@]}" "${EXTRA[@]}"; do
    [ "$b" = "${EXTRA[0]}" ] && echo "-- code changes (not in the geomean):"
    nv="$(value "$native" "$b")"
    row="$(printf '%-14s %11s' "$b" "${nv:-MISSING}")"
    [ -n "$nv" ] || bad=1
    for p in "${PASSES[@]}" "${CLIENTS[@]}"; do
        tv="$(value "${res[$p]}" "$b")"
        if [ -z "$tv" ] || [ -z "$nv" ]; then
            row+="$(printf ' %13s %7s %8s' "${tv:-MISSING}" - -)"; bad=1; continue
        fi
        e="$(entries "$p" "$b")"
        row+="$(awk -v a="$nv" -v t="$tv" -v e="${e:--}" 'BEGIN { printf " %13s %7.2f %8s", t, (a > 0 ? t / a : 0), e }')"
        [[ " ${EXTRA[*]} " == *" $b "* ]] && continue
        logsum[$p]="$(awk -v s="${logsum[$p]}" -v a="$nv" -v t="$tv" 'BEGIN { printf "%.12f", s + log(t / a) }')"
        count[$p]=$((count[$p] + 1))
    done
    echo "$row"
done
# The translated passes' lines name how many benchmarks they cover; the
# clients' only when some benchmark is missing (which fails the run).
for p in "${PASSES[@]}" "${CLIENTS[@]}"; do
    [ "${count[$p]}" -gt 0 ] || continue
    client=0; [[ " ${CLIENTS[*]} " == *" $p "* ]] && client=1
    awk -v p="$p" -v s="${logsum[$p]}" -v n="${count[$p]}" -v all="${#BENCHES[@]}" -v client=$client 'BEGIN {
        r = exp(s / n); of = sprintf(" (%d of %d benchmarks)", n, all)
        if (client) printf "geomean ratio %s/native: %.2f%s\n", p, r, (n < all ? of : "")
        else printf "geomean ratio %s/native%s: %.2f\n", p, of, r }'
done
echo "(ns/op = guest instructions per op under -icount shift=0; disp/op = kdbt dispatcher entries per op)"
grep -E '^kdbt-bench: (stat|dispatcher|client|entries_by_vector)' <<<"$clean" || true
echo "console log: $log"
exit "$bad"
