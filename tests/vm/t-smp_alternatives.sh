#!/bin/sh
# SMP alternatives: booted with one CPU online (the smp2max1 pass: -smp 2
# and the kernel's maxcpus=1) the kernel runs with its lock prefixes patched
# out; bringing CPU 1 online patches them back in ("SMP alternatives:
# switching to SMP code"). Here that happens under translation: kdbt loaded
# and enabled with CPU 1 offline, CPU 1 brought online, then /kdbt/bin/locks
# (a futex-contended mutex, atomics, O_APPEND writes to one tmpfs file, pipe
# ping-pong; threads pinned to CPUs 0 and 1) for 20 s: every total exact, no
# hang, CPU 1 ran translated. Natively first on CPU 0 alone (5 s), and
# natively again on both CPUs after. When CPU 1 is online at the start (the
# other boots) it runs natively on both CPUs, goes offline, and comes back
# under translation, with 5 s runs; kdbt_test.quick=1 also shortens to 5 s.
. ./lib.sh
K=/sys/kernel/kdbt
ON=/sys/devices/system/cpu/cpu1/online
L=/kdbt/bin/locks
SWITCH="SMP alternatives: switching to SMP code"
[ -f $ON ] || { echo "# SKIP no hotpluggable CPU 1 ($(cat /sys/devices/system/cpu/online) online)"; exit 4; }
up=$([ "$(cat $ON)" = 0 ] && echo 1 || echo 0)
SECS=$([ $up = 1 ] && [ "$(cmdline_opt quick 0)" != 1 ] && echo 20 || echo 5)
locks() { # what seconds cpu_a cpu_b
    $L $2 $3 $4 > /tmp/locks.out 2>&1
    rc=$?
    sed "s/^/$1: /" /tmp/locks.out
    [ $rc -eq 0 ] || fail "$1: locks exited $rc"
}
if [ $up = 1 ]; then
    echo "CPU 1 offline at the start ($(cat /sys/devices/system/cpu/online) online): uniprocessor alternatives"
    dmesg | grep -q "$SWITCH" && fail "the kernel switched to SMP code before CPU 1 came online"
    locks "native, CPU 0 only" 5 0 0
else
    locks "native" $SECS 0 1
    echo 0 > $ON || fail "offlining CPU 1 failed"
fi
# A kernel lock that stops excluding (a stale translation of UP code) hangs
# CPUs in spin loops: make the RCU stall that follows a panic the host sees,
# instead of waiting for the boot's timeout.
stall=$(cat /proc/sys/kernel/panic_on_rcu_stall)
trap 'echo "$stall" > /proc/sys/kernel/panic_on_rcu_stall' EXIT
echo 1 > /proc/sys/kernel/panic_on_rcu_stall || fail "panic_on_rcu_stall refused"
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
echo 1 > $ON || fail "onlining CPU 1 under translation failed"
[ "$(cat $ON)" = 1 ] || fail "CPU 1 not online"
if [ $up = 1 ]; then
    dmesg | grep -q "$SWITCH" || fail "onlining CPU 1 did not switch the kernel to SMP code"
    echo "onlining CPU 1 under translation: $(dmesg | grep -o "$SWITCH")"
fi
[ -r $K/stats/cpu1/dispatcher_entries ] || fail "no $K/stats/cpu1/dispatcher_entries after onlining CPU 1"
e0=$(cat $K/stats/cpu1/dispatcher_entries)
$L $SECS 0 1 > /tmp/locks.out 2>&1
rc=$?
e1=$(cat $K/stats/cpu1/dispatcher_entries)
echo 0 > $K/enabled || fail "disable failed"
sed 's/^/translated: /' /tmp/locks.out
[ $rc -eq 0 ] || fail "translated: locks exited $rc"
echo "translated: CPU 1 dispatcher_entries $e0 -> $e1"
[ "$e1" -gt "$e0" ] || fail "CPU 1 did not run translated"
echo "$(inval_stats)"
kdbt_unload
[ $up = 1 ] && locks "native, CPUs 0 and 1" 5 0 1
exit 0
