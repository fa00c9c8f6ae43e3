#!/bin/sh
# The smallest cache still runs the whole workload correctly, by flushing.
. ./lib.sh
. ./workload.inc
workload > /tmp/native.out 2>&1
kdbt_load
echo 3072 > /sys/kernel/kdbt/cache_kb || fail "cache_kb 3072 (the minimum) rejected"
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
workload > /tmp/translated.out 2>&1
echo 0 > /sys/kernel/kdbt/enabled
diff /tmp/native.out /tmp/translated.out || fail "translated output differs from native"
flushes=$(cat /sys/kernel/kdbt/stats/flushes)
echo "flushes: $flushes"
[ "$flushes" -gt 0 ] || fail "a 3072 KiB cache never filled"
kdbt_unload
