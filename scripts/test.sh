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

for kernel in small distro; do
    echo "== vm: tests/vm on the $kernel kernel"
    KDBT_KERNEL=$kernel bash "$here/vm-test.sh" | tee "$KDBT_BUILD/vm-test-$kernel.log"
    read -r p f < <(sed -n 's/^vm: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$KDBT_BUILD/vm-test-$kernel.log")
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1}))
done

echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
