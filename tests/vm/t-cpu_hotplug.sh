#!/bin/sh
# CPU hotplug under translation: CPU 1 goes offline and online 20 times while
# a fork/exec load runs; after each online a workload pinned to CPU 1 must
# run translated there (stats/cpu1/dispatcher_entries grows) and print what
# it prints natively (the same cycles run natively first).
. ./lib.sh
K=/sys/kernel/kdbt
ON=/sys/devices/system/cpu/cpu1/online
CYCLES=$([ "$(cmdline_opt quick 0)" = 1 ] && echo 5 || echo 20) # 5 in the extra -smp boots
[ -f $ON ] || { echo "# SKIP no hotpluggable CPU 1 ($(cat /sys/devices/system/cpu/online) online)"; exit 4; }
pinned() { taskset -c 1 sh -c 'echo "cpu1 pipeline: $(seq 1 3000 | awk "{ s += \$1 } END { print s }") $(seq 1 500 | md5sum | cut -c1-32)"; i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i + 1)); done; echo "cpu1 fork+exec: $i"'; }
cycle() { # n translated
    echo 0 > $ON || fail "offlining CPU 1 failed (cycle $1)"
    [ "$(cat $ON)" = 0 ] || fail "CPU 1 still online after offlining (cycle $1)"
    echo 1 > $ON || fail "onlining CPU 1 failed (cycle $1)"
    [ "$(cat $ON)" = 1 ] || fail "CPU 1 not online (cycle $1)"
    if [ "$2" = 1 ]; then
        [ -r $K/stats/cpu1/dispatcher_entries ] || fail "no $K/stats/cpu1/dispatcher_entries after online (cycle $1)"
        e0=$(cat $K/stats/cpu1/dispatcher_entries)
    fi
    echo "cycle $1: $(cat /sys/devices/system/cpu/online) online"
    pinned
    if [ "$2" = 1 ]; then
        e1=$(cat $K/stats/cpu1/dispatcher_entries)
        echo "cycle $1: cpu1 dispatcher_entries $e0 -> $e1" >> /tmp/hp.stats
        [ "$e1" -gt "$e0" ] || fail "cycle $1: CPU 1 did not run translated after coming online (dispatcher_entries $e0 -> $e1)"
    fi
}
cycles() { # translated; run in a subshell: fail ends the cycles only
    n=1
    while [ $n -le $CYCLES ]; do cycle $n $1; n=$((n + 1)); done
}
start_load
(cycles 0) > /tmp/hp.native 2>&1
rc=$?
stop_load
[ $rc -eq 0 ] || { cat /tmp/hp.native; [ "$(cat $ON)" = 1 ] || echo 1 > $ON; fail "native hotplug cycles failed"; }
head -3 /tmp/hp.native
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
rm -f /tmp/hp.stats
start_load
(cycles 1) > /tmp/hp.translated 2>&1
rc=$?
stop_load
sed -n '1p;$p' /tmp/hp.stats 2>/dev/null | uniq
[ "$(cat $ON)" = 1 ] || echo 1 > $ON
echo 0 > $K/enabled || fail "disable failed"
[ $rc -eq 0 ] || { tail -3 /tmp/hp.translated; fail "translated hotplug cycles failed"; }
diff /tmp/hp.native /tmp/hp.translated || fail "translated output differs from native"
echo "$CYCLES offline/online cycles, translated output identical; blocks $(cat $K/stats/blocks_translated)"
kdbt_unload
