#!/bin/sh
# 50 enable/disable cycles while a fork/exec load runs, then rmmod while
# enabled: no oops or WARN (the host checks the console log).
. ./lib.sh
kdbt_load
start_load
i=0
while [ $i -lt 50 ]; do
    echo 1 > /sys/kernel/kdbt/enabled || fail "enable $i failed"
    usleep 20000
    echo 0 > /sys/kernel/kdbt/enabled || fail "disable $i failed"
    i=$((i + 1))
done
echo 1 > /sys/kernel/kdbt/enabled || fail "final enable failed"
usleep 50000
stop_load
echo "cycles: $i, blocks $(cat /sys/kernel/kdbt/stats/blocks_translated)"
kdbt_unload
