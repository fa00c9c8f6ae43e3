#!/usr/bin/env bash
# `make coverage` / `make profile` (docs/reports.md): boots the test VM in mode
# coverage or profile (tests/vm/client-run.sh: kdbt with the coverage or count
# client, the workload translated), unpacks the client's debugfs files, sent
# over the guest's second serial port, into $KDBT_BUILD/MODE, and writes the
# reports there (scripts/kdbt_report.py against the kernel's vmlinux).
# usage: client-report.sh coverage|profile
# KDBT_WORKLOAD: a shell file to run instead of tests/vm/short-workload.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
mode="${1:-}"; out="$KDBT_BUILD/$mode"
case "$mode" in
    coverage) report=(coverage "$out/coverage" --html) ;;
    profile) report=(profile "$out/counts" --plot) ;;
    *) die "usage: client-report.sh coverage|profile" ;;
esac
if [ -n "${KDBT_WORKLOAD:-}" ]; then
    [ -f "$KDBT_WORKLOAD" ] || die "KDBT_WORKLOAD=$KDBT_WORKLOAD: no such file"
    KDBT_WORKLOAD="$(realpath "$KDBT_WORKLOAD")"; export KDBT_WORKLOAD
fi
mkdir -p "$out"
rm -f "$out"/{coverage,coverage.drcov,counts,dmesg,errors,data.tgz,ttyS1.txt}
log="$out/console.log"
serial="$out/ttyS1.log"
: > "$serial"
KDBT_APPEND="quiet ${KDBT_APPEND:-}" KDBT_QUIET=1 "$here/vm.sh" "$mode" "$log" "${KDBT_VM_TIMEOUT:-900}" \
    -serial "file:$serial" || die "VM run failed; see $log"
sed -n "/=== kdbt client /,/^=== end ===/p" "$log" | tr -d "\r" | sed "s/^.*=== kdbt client /=== kdbt client /"
# The data: base64 between marker lines; the first gives its size and md5.
data="$out/ttyS1.txt"
tr -d '\r' < "$serial" > "$data"
read -r size sum < <(sed -n 's/^=== kdbt data begin \([0-9]*\) \([0-9a-f]*\) ===$/\1 \2/p' "$data") \
    || die "no data from the guest on its second serial port ($serial); see $log"
grep -qx "=== kdbt data end ===" "$data" || die "the guest's data stops early ($serial); see $log"
sed -n '/^=== kdbt data begin /,/^=== kdbt data end ===$/{//!p}' "$data" | base64 -d > "$out/data.tgz" \
    || die "the guest's data is not base64 ($serial)"
[ "$(stat -c %s "$out/data.tgz")" = "$size" ] && [ "$(md5sum < "$out/data.tgz" | cut -c1-32)" = "$sum" ] \
    || die "the guest's data arrived damaged: not $size bytes with md5 $sum ($serial)"
rm "$data"
tar -xzf "$out/data.tgz" -C "$out"
[ ! -s "$out/errors" ] || die "in the guest: $(tr '\n' ';' < "$out/errors")"
echo "console log: $log; data: $(cd "$out" && tar -tzf data.tgz | tr '\n' ' ')"
tree="$("$here/kernel.sh")"
# Debian's python3 (/usr/bin), which has python3-matplotlib.
/usr/bin/python3 "$here/kdbt_report.py" "${report[@]}" --elf "$tree/vmlinux" --objects "$tree/vmlinux.a" \
    --tree "$tree" --out "$out"
