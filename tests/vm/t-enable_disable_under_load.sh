#!/bin/sh
# 50 enable/disable cycles (10 with kdbt_test.quick=1) while a fork/exec
# load runs, then rmmod while enabled: no oops or WARN (the host checks the
# console log).
. ./lib.sh
kdbt_load
start_load
i=0
cycles=$(cmdline_opt quick 0 | sed 's/^1$/10/; s/^0$/50/')
while [ $i -lt $cycles ]; do
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
