#!/usr/bin/env bash
# `make bench`: boots the test VM under QEMU -icount shift=0,sleep=off (guest
# time = guest instructions, 1 ns each), runs the lmbench-style suite
# (tests/bench/lmbench.c, driven by tests/bench/run.sh) natively and then with
# the kernel translated by kdbt in the same boot, and prints one row per
# benchmark: native ns/op, translated ns/op, translated/native, then the
# geometric-mean ratio. See docs/bench.md.
# Environment: KDBT_BENCH_SCALE (iteration-count percent, default 100),
# KDBT_VM_TIMEOUT (seconds, default 900).
# Exit status: non-zero if the VM or either pass failed, the kernel oopsed,
# or a benchmark is missing from either result set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
log="$KDBT_BUILD/vm/bench-console.log"
scale="${KDBT_BENCH_SCALE:-100}"
[[ "$scale" =~ ^[1-9][0-9]*$ ]] || die "KDBT_BENCH_SCALE must be a positive integer (percent), got '$scale'"
BENCHES=(null_syscall read_devnull write_devnull open_close stat pipe_rtt unix_rtt
         fork_exit fork_exec page_fault mmap_munmap signal)

# The module is built from the working tree; say which tree the figures belong to.
dirty="$(cd "$KDBT_ROOT" && git status --porcelain -- src/module Kbuild 2>/dev/null | wc -l)"
echo "kdbt.ko from $(cd "$KDBT_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s) under src/module")"
start=$(date +%s)
set +e
KDBT_APPEND="quiet kdbt.bench_scale=$scale ${KDBT_APPEND:-}" KDBT_QUIET=1 \
    "$here/vm.sh" bench "$log" "${KDBT_VM_TIMEOUT:-900}" -icount shift=0,sleep=off
vmrc=$?
set -e
echo "VM wall time: $(( $(date +%s) - start )) s"

# Result lines of one pass: "name value" between its two markers.
results() {
    # Markers are matched anywhere in a line: the first one follows the
    # firmware's screen-clearing escapes on the same console line.
    tr -d '\r' <"$log" | awk -v pass="$1" '
        index($0, "=== kdbt bench " pass " end ===") { on = 0 }
        on && /^[a-z_]+ [0-9]+(\.[0-9]+)?$/ { print }
        index($0, "=== kdbt bench " pass " (") { on = 1 }'
}
native="$(results native)"
translated="$(results translated)"

bad=0
[ "$vmrc" -eq 0 ] || { echo "bench: VM exited with status $vmrc"; bad=1; }
if tr -d '\r' <"$log" | grep -E 'kdbt-bench: FAIL|lmbench: FAIL'; then bad=1; fi
if tr -d '\r' <"$log" | grep -E 'Oops|BUG:|WARNING:|Kernel panic|general protection fault|RIP:'; then
    echo "bench: kernel oops/WARN in the console log"; bad=1
fi
grep -q '=== kdbt bench done ===' <(tr -d '\r' <"$log") || { echo "bench: guest run did not finish"; bad=1; }

printf '%-14s %14s %14s %8s\n' benchmark native_ns translated_ns ratio
logsum=0; n=0
for b in "${BENCHES[@]}"; do
    nv="$(awk -v b="$b" '$1 == b { print $2 }' <<<"$native")"
    tv="$(awk -v b="$b" '$1 == b { print $2 }' <<<"$translated")"
    if [ -z "$nv" ] || [ -z "$tv" ]; then
        printf '%-14s %14s %14s %8s\n' "$b" "${nv:-MISSING}" "${tv:-MISSING}" -
        bad=1; continue
    fi
    ratio="$(awk -v a="$nv" -v b="$tv" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')"
    printf '%-14s %14s %14s %8s\n' "$b" "$nv" "$tv" "$ratio"
    logsum="$(awk -v s="$logsum" -v a="$nv" -v b="$tv" 'BEGIN { printf "%.12f", s + log(b / a) }')"
    n=$((n + 1))
done
if [ "$n" -gt 0 ]; then
    awk -v s="$logsum" -v n="$n" 'BEGIN { printf "geomean ratio (%d benchmarks): %.2f\n", n, exp(s / n) }'
fi
tr -d '\r' <"$log" | grep -E '^kdbt-bench: (stat|dispatcher)' || true
echo "console log: $log"
exit "$bad"
