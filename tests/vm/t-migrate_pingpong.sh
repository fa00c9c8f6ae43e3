#!/bin/sh
# Tasks that move to another CPU on every wakeup, inside deep kernel call
# chains (progs/migrate.c: a pipe ping-pong between two processes, each moved
# to the next CPU before every round, so every round also runs the migration
# stopper), translated with the smallest cache while the caches are flushed
# under them: the values exchanged equal native. Fast mode's acceptance names
# this test (there a migrating task carries return addresses into the cache).
. ./lib.sh
K=/sys/kernel/kdbt
[ "$(online_cpus | wc -l)" -ge 2 ] || { echo "# SKIP one CPU online"; exit 4; }
rounds=3000
[ "$(cmdline_opt quick 0)" = 1 ] && rounds=1000
/kdbt/bin/migrate $rounds > /tmp/native.out 2> /tmp/native.err || fail "native run failed: $(cat /tmp/native.err)"
kdbt_load
echo 3072 > $K/cache_kb || fail "cache_kb 3072 (the minimum) refused"
echo 1 > $K/enabled || fail "enable failed"
f0=$(kdbt_stat flushes)
rm -f /tmp/migrate-rc
( /kdbt/bin/migrate $rounds > /tmp/translated.out 2> /tmp/translated.err; echo $? > /tmp/migrate-rc ) &
writes=0
while :; do
    echo 1 > $K/flush || fail "flush $writes failed"
    writes=$((writes + 1))
    [ -e /tmp/migrate-rc ] && break
    sleep 1
done
wait
f1=$(kdbt_stat flushes)
echo 0 > $K/enabled || fail "disable failed"
echo "native: $(cat /tmp/native.out), $(cat /tmp/native.err)"
echo "translated: $(cat /tmp/translated.out), $(cat /tmp/translated.err); $writes flush writes, flushes $f0 -> $f1"
expect_eq "$(cat /tmp/migrate-rc)" 0 "translated run's exit status ($(cat /tmp/translated.err))"
diff /tmp/native.out /tmp/translated.out || fail "translated output differs from native"
moved=$(sed -n 's/^migrations //p' /tmp/translated.err)
[ "${moved:-0}" -ge $rounds ] || fail "only ${moved:-0} migrations in $rounds rounds of two processes"
[ $((f1 - f0)) -ge $writes ] || fail "flushes went from $f0 to $f1 with $writes flush writes"
kdbt_unload
