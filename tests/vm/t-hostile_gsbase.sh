#!/bin/sh
# A hostile user GS base: an unprivileged program (uid/gid 1000) sets its GS
# base to a kernel-half address with wrgsbase, or to a user address with
# arch_prctl(ARCH_SET_GS), and spins in user mode for ~3 s taking SIGALRM
# every 10 ms, while translation is on, /sys/kernel/kdbt/flush is written 20
# times and a fork/exec load runs; once with the default cache and once with
# the smallest (3072 KiB, so it fills). The program must exit 0 with many
# signals, and its normalised output must equal the native run's.
. ./lib.sh
G=/kdbt/bin/gsbase
K=/sys/kernel/kdbt
# "gsbase <mode> ok" and any failure lines; the signal count differs per run.
normalised() { grep -v '^signals: '; }
run() { # mode tag: runs $G under the flush storm and the load
    start_load
    $G "$1" > /tmp/gs.$2.out 2>&1 &
    prog=$!
    i=0
    while [ $i -lt 20 ]; do
        echo 1 > $K/flush || { kill $prog; stop_load; fail "flush $i failed ($2)"; }
        usleep 40000
        i=$((i + 1))
    done
    wait $prog
    rc=$?
    stop_load
    echo "$2: exit $rc, $(cat /tmp/gs.$2.out | tr '\n' ';') flushes $(cat $K/stats/flushes)"
    [ $rc -eq 0 ] || fail "$2: gsbase $1 exited $rc"
    normalised < /tmp/gs.$2.out > /tmp/gs.$2.norm
    diff /tmp/gs.native-$1.norm /tmp/gs.$2.norm || fail "$2: output differs from native"
}
# Native first; it skips (exit 4) without FSGSBASE.
$G wrgsbase > /tmp/gs.native-wrgsbase.out 2>&1
rc=$?
cat /tmp/gs.native-wrgsbase.out
[ $rc -eq 4 ] && { echo "# SKIP no FSGSBASE"; exit 4; }
[ $rc -eq 0 ] || fail "native gsbase wrgsbase exited $rc"
$G arch_prctl > /tmp/gs.native-arch_prctl.out 2>&1 || { cat /tmp/gs.native-arch_prctl.out; fail "native gsbase arch_prctl failed"; }
cat /tmp/gs.native-arch_prctl.out
for m in wrgsbase arch_prctl; do normalised < /tmp/gs.native-$m.out > /tmp/gs.native-$m.norm; done
grep -q "^gsbase wrgsbase ok$" /tmp/gs.native-wrgsbase.norm || fail "native run did not print 'gsbase wrgsbase ok'"

kdbt_load
for cache in default 3072; do
    [ $cache = default ] || echo $cache > $K/cache_kb || fail "cache_kb $cache refused"
    echo 1 > $K/enabled || fail "enable failed (cache $cache)"
    for m in wrgsbase arch_prctl; do run $m "translated-$m-cache-$cache"; done
    echo 0 > $K/enabled || fail "disable failed"
done
echo "blocks $(cat $K/stats/blocks_translated), flushes $(cat $K/stats/flushes), dispatcher entries $(cat $K/stats/dispatcher_entries)"
[ "$(cat $K/stats/flushes)" -ge 80 ] || fail "fewer flushes than the 80 written"
kdbt_unload
