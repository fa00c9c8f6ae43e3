#!/usr/bin/env bash
# `make run`: boots the test VM, loads kdbt, runs a short real workload
# (tests/vm/workload.sh) and prints what the module reported.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
log="$KDBT_BUILD/vm/run-console.log"
KDBT_APPEND="quiet ${KDBT_APPEND:-}" KDBT_QUIET=1 "$here/vm.sh" run "$log" "${KDBT_VM_TIMEOUT:-600}" || die "VM run failed; see $log"
sed -n "/=== kdbt run ===/,/^=== end ===/p" "$log" | tr -d "\r" | sed "s/^.*=== kdbt run ===/=== kdbt run ===/"
echo "console log: $log"
