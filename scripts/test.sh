#!/usr/bin/env bash
# `make test`: host tests (cargo test, kdbt_report.py's unittest), user-space
# busybox check, the VM suite on the small test kernel and on the
# distro-configuration kernel (each built into the cache first if missing).
# Ends with one line "N passed, N failed" over everything.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
cd "$KDBT_ROOT"
mkdir -p "$KDBT_BUILD"
rm -f "$SLOWNESS_FILE" # measured anew by this run's passes
passed=0; failed=0

echo "== host: cargo test"
cargo test --release --workspace 2>&1 | tee "$KDBT_BUILD/cargo-test.log"
cargo_rc=${PIPESTATUS[0]}
read -r p f < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
                     END { print p + 0, f + 0 }' "$KDBT_BUILD/cargo-test.log")
# A build failure runs no test at all: count it as one failure.
[ "$cargo_rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
passed=$((passed + p)); failed=$((failed + f))

echo "== host: kdbt_report.py (make coverage / make profile reports of synthetic data on a tiny ELF)"
/usr/bin/python3 -m unittest discover -s "$here" -p 'test_*.py' 2>&1 | tee "$KDBT_BUILD/report-test.log"
# unittest ends with "Ran N tests" and "OK" or "FAILED (failures=F, errors=E)"; no
# "Ran" line (it could not start) or no test run counts as one failure.
read -r p f < <(awk '/^Ran [0-9]+ tests? in/ { n = $2 }
                     /^FAILED/ { while (match($0, /(failures|errors)=[0-9]+/)) { v = substr($0, RSTART, RLENGTH); sub(/.*=/, "", v); f += v; $0 = substr($0, RSTART + RLENGTH) } }
                     END { if (n == "" || n == 0) print 0, 1; else print n - f, f + 0 }' "$KDBT_BUILD/report-test.log")
passed=$((passed + p)); failed=$((failed + f))

echo "== host: user-check --quick (busybox under translation, both call/ret policies)"
# --quick skips the counted runs (minutes of CPU) that only measure the share of
# instructions run from the cache; `make user-check` does them.
if bash "$here/user-check.sh" --quick; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

# The VM passes, most telling first, so that a deadline (KDBT_DEADLINE, set by
# .ci/run) skips the least: smp1 (a minute; it also measures how fast this
# host runs guests), the whole suite on each kernel with the distro kernel's
# short boots (3 min, what no other boot covers), then the other small-kernel
# boots, shortest first.
# The distro kernel is built (~17 min here) only if it and its whole-suite
# pass fit before the deadline. KDBT_PASSES runs the given passes on both.
DISTRO_BUILD_S=1100
vm() { # kernel passes
    local kernel=$1 log p f s; shift
    log="$KDBT_ROOT/build/vm-test-$kernel-${1%% *}.log"
    echo "== vm: tests/vm on the $kernel kernel${1:+ (passes: $1)}"
    KDBT_KERNEL=$kernel KDBT_PASSES="$1" bash "$here/vm-test.sh" | tee "$log"
    read -r p f < <(sed -n 's/^vm: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$log")
    s=$(sed -n 's/^vm: \([0-9]*\) skipped$/\1/p' "$log")
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1})); skipped=$((skipped + ${s:-0}))
}
distro_fits() {
    local tree slow need
    tree="$(KDBT_KERNEL=distro bash -c ". '$here/common.sh'; kernel_tree")"
    [ -f "$tree/.kdbt-built" ] && return 0
    slow=$(host_slowness)
    need=$(( (DISTRO_BUILD_S + $(estimate distro all4)) * slow / 100 + 120 ))
    [ "$(budget_left)" -ge "$need" ] && return 0
    echo "skip - distro kernel build: it and distro-all4 are expected to take ${need} s (host slowness ${slow}%), $(budget_left) s left before the deadline"
    return 1
}
skipped=0
if [ -n "${KDBT_PASSES:-}" ]; then
    vm small "$KDBT_PASSES"
    vm distro "$KDBT_PASSES"
else
    vm small "smp1 default"
    distro=0
    if distro_fits; then
        t0=$(date +%s)
        if KDBT_KERNEL=distro bash "$here/kernel.sh" >/dev/null; then
            distro=1
            note_slowness "$DISTRO_BUILD_S" "$(( $(date +%s) - t0 ))"
        else
            echo "not ok - distro kernel build"; failed=$((failed + 1))
        fi
    else
        skipped=$((skipped + 4))
    fi
    [ "$distro" = 1 ] && vm distro "all4 rethunk intel intelpti"
    vm small "smp4 smp2max1 smp64max2 smp8 mincache"
fi
[ "$skipped" -gt 0 ] && echo "skipped for the deadline: $skipped VM passes (not counted as passed or failed)"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
