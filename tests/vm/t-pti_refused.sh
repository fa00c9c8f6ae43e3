#!/bin/sh
# With page-table isolation active (an Intel CPU the kernel deems Meltdown-
# vulnerable, the distro kernel's intelpti pass), enabling translation is
# refused with EOPNOTSUPP and a one-line reason in the log, and the kernel is
# left as it was: still native, nothing translated, the module unloads.
# Skipped where PTI is off.
. ./lib.sh
grep -qw pti /proc/cpuinfo || { echo "PTI is not active here"; exit 4; }
K=/sys/kernel/kdbt
kdbt_load
if echo 1 > $K/enabled 2> /tmp/pti.err; then
    echo 0 > $K/enabled
    fail "enabling translation with PTI active succeeded"
fi
grep -q "not supported" /tmp/pti.err || fail "the refusal is not EOPNOTSUPP: $(cat /tmp/pti.err)"
expect_eq "$(cat $K/enabled)" 0 "enabled after the refusal"
expect_eq "$(cat $K/stats/blocks_translated)" 0 "blocks translated after the refusal"
reason=$(dmesg | grep "kdbt: cannot enable translation: page-table isolation" | tail -1)
[ -n "$reason" ] || fail "no reason in the kernel log"
echo "log: ${reason#*] }"
# The same again: the refusal leaves nothing behind that changes the answer.
echo 1 > $K/enabled 2> /dev/null && fail "the second enable succeeded"
kdbt_unload
