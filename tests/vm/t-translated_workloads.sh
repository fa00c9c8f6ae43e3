#!/bin/sh
# Every workload (pipelines, fork/exec, tmpfs, pipes, unix/TCP echo, sleep,
# page faults, SIGSEGV/SIGFPE handlers, EFAULT) gives the same output
# translated as natively, the statistics show it ran translated, and kdbt's
# heap in use beyond iced-x86's load-time tables stays at or below the
# code-cache bytes in use.
. ./lib.sh
. ./workload.inc
workload > /tmp/native.out 2>&1
kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
e0=$(cat /sys/kernel/kdbt/stats/dispatcher_entries)
workload > /tmp/translated.out 2>&1
e1=$(cat /sys/kernel/kdbt/stats/dispatcher_entries)
heap=$(cat /sys/kernel/kdbt/heap_bytes_used); cache=$(cat /sys/kernel/kdbt/stats/cache_bytes_used)
tables=$(cat /sys/kernel/kdbt/heap_bytes_tables)
cat /proc/self/stack > /tmp/stack.out
echo 0 > /sys/kernel/kdbt/enabled || fail "disable failed"
cat /tmp/translated.out
diff /tmp/native.out /tmp/translated.out || fail "translated output differs from native"
for f in blocks_translated dispatcher_entries pc_rewrites rollbacks lookup_hits lookup_misses flushes invalidations blocks_invalidated; do
    per_cpu=
    for c in $(online_cpus); do per_cpu="$per_cpu cpu$c $(cat /sys/kernel/kdbt/stats/cpu$c/$f 2>/dev/null)"; done
    echo "stat $f $(cat /sys/kernel/kdbt/stats/$f) ($per_cpu )"
done
[ "$(cat /sys/kernel/kdbt/stats/blocks_translated)" -gt 1000 ] || fail "fewer than 1000 blocks translated"
min_entries=$([ "$workload_forks" = 1000 ] && echo 10000 || echo 3000)
[ $((e1 - e0)) -gt $min_entries ] || fail "dispatcher entries grew by only $((e1 - e0)) during the workload (want > $min_entries)"
[ "$(cat /sys/kernel/kdbt/stats/pc_rewrites)" -gt 0 ] || fail "no PC rewrites"
echo "heap in use $heap bytes ($tables of them iced-x86's tables), code cache in use $cache bytes"
[ "$tables" -gt 0 ] && [ "$tables" -lt "$heap" ] || fail "heap_bytes_tables ($tables) not within heap_bytes_used ($heap)"
[ $((heap - tables)) -le "$cache" ] || fail "kdbt's heap beyond its tables ($((heap - tables)) bytes) holds more than the code cache in use ($cache bytes)"
echo "/proc/self/stack under translation:"; cat /tmp/stack.out
[ -s /tmp/stack.out ] || fail "empty /proc/self/stack"
grep -v '^\[<0>\] [a-zA-Z_][a-zA-Z0-9_.]*+0x[0-9a-f]*/0x[0-9a-f]*$' /tmp/stack.out && fail "stack entry that is not kernel text"
grep -q kdbt /tmp/stack.out && fail "code-cache address on the stack"
kdbt_unload
