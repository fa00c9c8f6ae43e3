#!/usr/bin/env bash
# Runs the VM suite (tests/vm) in the guest and judges it on the host:
# KTAP results, plan, kernel errors in the console log, timeout, and the
# decode check against objdump. Prints KTAP-style results and a count line
# "vm: N passed, N failed".
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
log="$KDBT_BUILD/vm/test-console.log"
rm -f "$log"
KDBT_QUIET=1 "$here/vm.sh" test "$log" "${KDBT_VM_TIMEOUT:-900}"
rc=$?
python3 "$here/judge-vm.py" "$log" "$("$here/kernel.sh")/vmlinux" "$rc"
