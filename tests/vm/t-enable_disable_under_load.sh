#!/bin/sh
# 50 enable/disable cycles while a fork/exec load runs, then rmmod while
# enabled: no oops or WARN (the host checks the console log).
. ./lib.sh
kdbt_load
( while [ ! -e /tmp/stop-load ]; do /bin/true; echo x | cat > /dev/null; done ) &
load=$!
i=0
while [ $i -lt 50 ]; do
    echo 1 > /sys/kernel/kdbt/enabled || fail "enable $i failed"
    usleep 20000
    echo 0 > /sys/kernel/kdbt/enabled || fail "disable $i failed"
    i=$((i + 1))
done
echo 1 > /sys/kernel/kdbt/enabled || fail "final enable failed"
usleep 50000
touch /tmp/stop-load
wait $load
echo "cycles: $i, blocks $(cat /sys/kernel/kdbt/stats/blocks_translated)"
kdbt_unload
