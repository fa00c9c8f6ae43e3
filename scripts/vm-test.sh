#!/usr/bin/env bash
# Runs the VM suite (tests/vm) in the guest and judges it on the host:
# KTAP results, plan, kernel errors in the console log, timeout, and the
# decode check against objdump. The suite runs twice, in two boots: with the
# default code-cache size, and with every test's cache at the smallest size
# the module allows. Prints KTAP-style results and one count line
# "vm: N passed, N failed" over both passes.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
# The module's minimum cache_kb (control::MIN_CACHE_KB); t-smallest_cache
# checks that one KiB less is refused, so the two cannot drift apart.
MIN_CACHE_KB=2048
vmlinux="$("$here/kernel.sh")/vmlinux"
passed=0; failed=0
for pass in default mincache; do
    log="$KDBT_BUILD/vm/test-console-$pass.log"
    rm -f "$log"
    append="${KDBT_APPEND:-}"
    [ "$pass" = mincache ] && append="$append kdbt_test.cache_kb=$MIN_CACHE_KB"
    echo "== vm pass: $pass"
    KDBT_APPEND="$append" KDBT_QUIET=1 "$here/vm.sh" test "$log" "${KDBT_VM_TIMEOUT:-900}"
    rc=$?
    out="$(python3 "$here/judge-vm.py" "$log" "$vmlinux" "$rc" "$pass")"
    echo "$out" | grep -v '^vm: '
    read -r p f < <(echo "$out" | sed -n 's/^vm: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1}))
done
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
