#!/bin/sh
# kprobes on a function only this case calls: kdbt_kprobe.ko
# (tests/vm/modules/kprobe) arms a counting kprobe at __x64_sys_getppid (an
# alias of __do_sys_getppid; at its fentry call the kernel makes an
# ftrace-based probe) and after that call (an int3 probe, which the
# kprobe optimizer turns into a jump: waited for), and /kdbt/bin/sysloop
# makes N getppid calls on each online CPU in turn (N = 5000, 1000 with
# kdbt_test.quick=1): exactly N per CPU hits; after disarming, as many calls
# again add none. Natively, then translated with the function already
# translated on every CPU (the same calls before arming: hot in each CPU's
# code cache).
. ./lib.sh
K=/sys/kernel/kdbt
P=/proc/kdbt_kprobe
SYM=__x64_sys_getppid
N=$([ "$(cmdline_opt quick 0)" = 1 ] && echo 1000 || echo 5000)
cpus=$(online_cpus)
HITS=$((N * $(echo $cpus | wc -w)))
L=/sys/kernel/debug/kprobes/list
grep -q " $SYM\$" /proc/kallsyms || fail "$SYM not in /proc/kallsyms"
[ -f $L ] || mount -t debugfs none /sys/kernel/debug || fail "mounting debugfs failed"
insmod /kdbt/modules/kdbt_kprobe.ko || fail "insmod kdbt_kprobe failed"
calls() { # what: sysloop N on each online CPU
    for c in $cpus; do
        taskset -c $c /kdbt/bin/sysloop $N > /tmp/kp.out 2>&1 || { cat /tmp/kp.out; fail "$1: sysloop $N on CPU $c failed"; }
    done
}
base=$(awk -v s=$SYM '$3 == s { print $1; exit }' /proc/kallsyms)
# The probe's kind in debugfs' kprobes list, found by the address the kernel
# gave it (/proc/kdbt_kprobe; the list names $SYM by its alias
# __do_sys_getppid): FTRACE, OPTIMIZED, or int3.
armed_at() { sed -n 's/.* at 0x\([0-9a-f]*\)$/\1/p' $P; }
kind() {
    grep "^$(printf %016x 0x$(armed_at)) " $L | tr -s ' ' | cut -d' ' -f4- | sed 's/^$/int3/'
}
probe() { # offset what
    off=$1
    echo "arm $SYM+$off" > $P || fail "$2: arming $SYM+$off failed"
    # The optimizer turns an int3 probe into a jump some jiffies later.
    i=0
    while [ $off != 0 ] && [ $i -lt 30 ] && ! kind | grep -q OPTIMIZED; do usleep 100000; i=$((i + 1)); done
    k=$(kind)
    [ -n "$k" ] || fail "$2: no probe at $SYM+$off (0x$(armed_at)) in $L"
    calls "$2, armed at $SYM+$off"
    hits=$(cat $P)
    expect_eq "${hits% at *}" "hits $HITS armed $SYM+$off" "$2: $SYM+$off ($k) after $N calls on each of CPUs $(echo $cpus)"
    echo disarm > $P || fail "$2: disarming $SYM+$off failed"
    calls "$2, disarmed"
    expect_eq "$(cat $P)" "hits $HITS disarmed" "$2: $SYM+$off after disarming and $HITS more calls"
    echo "$2: $SYM+$off ($k): $HITS hits for $N calls on each of CPUs $(echo $cpus), none after disarming"
}
# A probe at the symbol lands on its fentry call, after the ENDBR on an IBT
# kernel; the int3 probe goes on the instruction after that call.
echo "arm $SYM" > $P || fail "arming $SYM failed"
after_fentry=$(( 0x$(armed_at) - 0x$base + 5 ))
echo disarm > $P
calls "native, unarmed"
probe 0 native
probe $after_fentry native
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
calls "translated, unarmed (hot)"
probe 0 translated
calls "translated, between probes"
probe $after_fentry translated
echo 0 > $K/enabled || fail "disable failed"
echo "blocks $(cat $K/stats/blocks_translated); $(inval_stats)"
kdbt_unload
rmmod kdbt_kprobe || fail "rmmod kdbt_kprobe failed"
