#!/bin/sh
# Guest side of `make bench` (run by /init in mode bench): the lmbench-style
# suite natively, then with the kernel translated by kdbt, in the same boot.
# scripts/bench.sh reads the result sets between the === markers.
# Kernel command-line option kdbt.bench_scale=PERCENT scales the iteration counts.
scale=100
for arg in $(cat /proc/cmdline); do
    case "$arg" in kdbt.bench_scale=*) scale="${arg#kdbt.bench_scale=}" ;; esac
done
bin=/kdbt/bin/lmbench
st=/sys/kernel/kdbt/stats
echo; echo "=== kdbt bench native (scale $scale%) ==="
$bin "$scale" || echo "kdbt-bench: FAIL native run exited $?"
echo "=== kdbt bench native end ==="
insmod /kdbt/kdbt.ko || { echo "kdbt-bench: FAIL insmod"; exit 1; }
echo 1 > /sys/kernel/kdbt/enabled || { echo "kdbt-bench: FAIL enable"; exit 1; }
e0=$(cat $st/dispatcher_entries)
echo "=== kdbt bench translated (scale $scale%) ==="
$bin "$scale" || echo "kdbt-bench: FAIL translated run exited $?"
echo "=== kdbt bench translated end ==="
e1=$(cat $st/dispatcher_entries)
echo 0 > /sys/kernel/kdbt/enabled || echo "kdbt-bench: FAIL disable"
echo "kdbt-bench: dispatcher_entries during translated run: $((e1 - e0))"
for f in blocks_translated cache_bytes_used lookup_hits lookup_misses pc_rewrites rollbacks flushes; do
    echo "kdbt-bench: stat $f $(cat $st/$f 2>/dev/null)"
done
rmmod kdbt || echo "kdbt-bench: FAIL rmmod"
echo "=== kdbt bench done ==="
