#!/bin/sh
# A knob writer sleeps inside kdbt (natively): `echo 1 > flush` waits in
# stop_machine, so its CPU switches to the stopper with a native __schedule,
# unless an interrupt came first: the kernel function it interrupted (inside
# the wait) goes on translated, kdbt's iretq being a hook, and so does the
# switch. The sched_switch probe counts the switches made natively
# (stats/native_switches) and sends the reschedule IPI that brings the next
# task back under translation; 20 flushes make some (14 to 20 seen).
# Translated switches never count: a pipeline's hundreds of context switches
# add none (or only the few of kdbt's own sysfs reads that slept).
. ./lib.sh
K=/sys/kernel/kdbt
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
ctxt() { awk '/^ctxt/ { print $2 }' /proc/stat; }
s0=$(kdbt_stat native_switches); c0=$(ctxt)
out=$(seq 1 20000 | sort -rn | head -1)
for i in 1 2 3; do seq 1 3000 | sort | uniq | wc -l > /dev/null; done
s1=$(kdbt_stat native_switches); c1=$(ctxt)
echo "workload: $((c1 - c0)) context switches, $((s1 - s0)) native"
expect_eq "$out" 20000 "pipeline output"
[ $((c1 - c0)) -gt 100 ] || fail "workload made only $((c1 - c0)) context switches"
[ $((s1 - s0)) -le 10 ] || fail "$((s1 - s0)) of $((c1 - c0)) translated context switches counted as native"
n=20
for i in $(seq 1 $n); do echo 1 > $K/flush || fail "flush $i failed"; done
s2=$(kdbt_stat native_switches)
echo "$n flushes: $((s2 - s1)) native switches"
[ $((s2 - s1)) -ge 1 ] || fail "$n flushes slept in stop_machine, but no native switch was seen"
# The tasks switched to natively came back: the workload still runs translated.
d0=$(kdbt_stat dispatcher_entries)
out=$(seq 1 2000 | sort -rn | head -1)
expect_eq "$out" 2000 "pipeline output after the flushes"
d1=$(kdbt_stat dispatcher_entries)
[ $((d1 - d0)) -gt 0 ] || fail "no dispatcher entries after the flushes"
echo 0 > $K/enabled || fail "disable failed"
kdbt_unload
