#!/bin/sh
# Module text reused at the same address: kdbt_reuse_a.ko and kdbt_reuse_b.ko
# (tests/vm/modules/reuse) have the same layout and different constants;
# reading /proc/kdbt_reuse prints "variant <V> (<tag>) value <N>". Under
# translation A is read on every online CPU, unloaded, and B loaded at A's
# old .text address (checked: the case fails if B lands elsewhere); B's reads
# on every CPU must print B's native line, not A's (stale translations).
# Then 200 alternating A/B load/read/unload cycles (/kdbt/bin/modcycle) while
# a fork/exec load runs on every CPU (20 cycles under one load loop with
# kdbt_test.quick=1), natively and translated: every read right, and at
# least half of the loads at the previous module's .text.
. ./lib.sh
K=/sys/kernel/kdbt
# kdbt_test.quick=1 (the boots with up to 8 vCPUs on the host's 2 cores):
# 20 cycles under one load loop, not one per CPU (each load and unload
# waits for IPIs to every vCPU: with all of them busy a cycle took ~5 s).
if [ "$(cmdline_opt quick 0)" = 1 ]; then CYCLES=20; LOAD=one; else CYCLES=200; LOAD=all; fi
cpus=$(online_cpus)
load() { # variant (a|b): loads it, sets $text to its .text address
    insmod /kdbt/modules/kdbt_reuse_$1.ko || fail "insmod kdbt_reuse_$1 failed"
    text=$(cat /sys/module/kdbt_reuse_$1/sections/.text) || fail "no .text address for kdbt_reuse_$1"
}
unload() { rmmod kdbt_reuse_$1 || fail "rmmod kdbt_reuse_$1 failed"; }
want() { [ "$1" = a ] && echo "$native_a" || echo "$native_b"; }
reads() { # variant what: reads /proc/kdbt_reuse on every online CPU, must be the native line
    for c in $cpus; do
        got=$(taskset -c "$c" cat /proc/kdbt_reuse) || fail "$2: read on CPU $c failed"
        [ "$got" = "$(want $1)" ] || fail "$2: CPU $c read '$got', want '$(want $1)' (kdbt_reuse_$1 .text $text)"
    done
}
cycles() { # what: $CYCLES alternating A/B cycles (/kdbt/bin/modcycle) under load
    start_load $LOAD
    t0=$(cut -d' ' -f1 /proc/uptime)
    /kdbt/bin/modcycle $CYCLES "$native_a" "$native_b" > /tmp/reuse.out 2>&1
    rc=$?
    secs=$(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $t0 }")
    stop_load
    echo "$1 (CPUs $(echo $cpus), $secs s): $(cat /tmp/reuse.out | tr '\n' ';')"
    [ $rc -eq 0 ] || fail "$1: A/B cycles failed"
    reused=$(sed -n 's/.* \([0-9]*\) of [0-9]* loads at the previous.*/\1/p' /tmp/reuse.out)
    [ $((${reused:-0} * 2)) -ge $CYCLES ] || fail "$1: only ${reused:-0} of $((CYCLES - 1)) loads reused the previous module's .text: the cycles do not exercise reuse"
}

# Native: the two lines, the same on every CPU, and different.
load a; native_a=$(cat /proc/kdbt_reuse); reads a "native A"; unload a
load b; native_b=$(cat /proc/kdbt_reuse); reads b "native B"; unload b
echo "native: '$native_a' / '$native_b'"
case "$native_a" in "variant A (first) value "*) ;; *) fail "native A read '$native_a'" ;; esac
case "$native_b" in "variant B (other) value "*) ;; *) fail "native B read '$native_b'" ;; esac
[ "${native_a##* }" != "${native_b##* }" ] || fail "A and B compute the same value"
cycles native

kdbt_load
echo 1 > $K/enabled || fail "enable failed"
load a; text_a=$text
reads a "translated A"
unload a
load b
printf 'translated: kdbt_reuse_a .text %s, then kdbt_reuse_b .text %s\n' "$text_a" "$text"
[ "$text" = "$text_a" ] || fail "kdbt_reuse_b loaded at $text, not at A's old $text_a: the case does not exercise reuse"
reads b "translated B at A's old text"
unload b
echo "translated: B at A's old .text read right on CPUs $(echo $cpus)"
cycles translated
echo 0 > $K/enabled || fail "disable failed"
echo "blocks $(cat $K/stats/blocks_translated); $(inval_stats)"
kdbt_unload
