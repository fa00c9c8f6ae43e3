#!/bin/sh
# Interrupts that land inside multi-instruction translations (indirect-branch
# lookups, call pushes) are rolled back to precise guest state: provoke many
# with a syscall-heavy loop under timer interrupts and count them.
. ./lib.sh
kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
r0=$(cat /sys/kernel/kdbt/stats/rollbacks)
i=0
while [ $i -lt 20 ]; do cat /proc/self/stat /proc/meminfo > /dev/null; i=$((i + 1)); done
dd if=/dev/zero of=/dev/null bs=1 count=20000 2>/dev/null
r1=$(cat /sys/kernel/kdbt/stats/rollbacks)
echo 0 > /sys/kernel/kdbt/enabled
echo "rollbacks: $r0 -> $r1, pc_rewrites $(cat /sys/kernel/kdbt/stats/pc_rewrites)"
[ "$r1" -gt "$r0" ] || fail "no rollback happened"
kdbt_unload
