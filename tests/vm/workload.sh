#!/bin/sh
# `make run`'s guest side: load kdbt, put the kernel under translation, run a
# short real workload, show what kdbt reported, then give the kernel back.
echo "=== kdbt run ==="
dmesg -c >/dev/null
insmod /kdbt/kdbt.ko || { echo "insmod failed"; echo "=== end ==="; exit 1; }
K=/sys/kernel/kdbt
echo "--- iced-x86 decoding kfree inside the kernel:"
dmesg | grep 'kdbt: decode' | sed 's/^\[[^]]*\] kdbt: decode //'
echo "--- echo 1 > $K/enabled (cache_kb=$(cat $K/cache_kb) per CPU)"
echo 1 > $K/enabled
start=$(cat /proc/uptime | cut -d' ' -f1)
echo "--- workload, translated: 200 fork+exec, a pipeline, tmpfs, sockets, faults"
. /kdbt/tests/short-workload.sh
echo "--- kernel stack of this shell, as the kernel sees it while translated:"
cat /proc/self/stack
echo "--- statistics (total / cpu0 / cpu1):"
for f in blocks_translated cache_bytes_used dispatcher_entries lookup_hits lookup_misses pc_rewrites rollbacks flushes native_fallbacks invalidations blocks_invalidated; do
    printf '%-20s %10s %10s %10s\n' "$f" "$(cat $K/stats/$f)" "$(cat $K/stats/cpu0/$f)" "$(cat $K/stats/cpu1/$f 2>/dev/null)"
done
heap=$(cat $K/heap_bytes_used); cache=$(cat $K/stats/cache_bytes_used); tables=$(cat $K/heap_bytes_tables)
echo "--- memory: kdbt heap in use $heap bytes ($tables of them iced-x86's load-time tables), code cache in use $cache bytes ($( [ "$heap" -le "$cache" ] && echo 'heap <= cache' || echo 'heap > cache' ); beyond the tables $((heap - tables)))"
echo "--- kernel entries by vector (vector count):"
cat $K/stats/entries_by_vector | tr '\n' ';' ; echo
echo 0 > $K/enabled
echo "--- echo 0: translation off after $(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $start }") s; rmmod"
rmmod kdbt
dmesg | grep 'kdbt:' | grep -v decode | sed 's/^\[[^]]*\] //'
echo "=== end ==="
