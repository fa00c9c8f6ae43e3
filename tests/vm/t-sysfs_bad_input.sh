#!/bin/sh
# Bad sysfs writes fail with EINVAL and change nothing; concurrent writers
# wait for each other instead of failing; read-only files refuse writes.
. ./lib.sh
kdbt_load
K=/sys/kernel/kdbt
for v in garbage 2 -1 "" " 1" 01x 99999999999999999999; do bad_write $K/enabled "$v"; done
for v in 0 3071 abc -5 65537 999999999; do bad_write $K/cache_kb "$v"; done
for v in 0 2 yes; do bad_write $K/flush "$v"; done
echo 5120 > $K/cache_kb || fail "valid cache_kb rejected"
expect_eq "$(cat $K/cache_kb)" 5120 "cache_kb"
echo 1 > $K/enabled || fail "enable failed"
bad_write $K/cache_kb 256
expect_eq "$(cat $K/cache_kb)" 5120 "cache_kb while enabled"
echo 1 > $K/flush || fail "flush failed"
echo 0 > $K/enabled
expect_eq "$(cat $K/enabled)" 0 "enabled"
# Writers racing each other: every write succeeds (the second waits its turn).
i=0
while [ $i -lt 10 ]; do
    ( echo 1 > $K/enabled || echo "enable failed" ) > /tmp/w1 2>&1 &
    ( echo 1 > $K/flush || echo "flush failed" ) > /tmp/w2 2>&1 &
    ( echo 0 > $K/enabled || echo "disable failed" ) > /tmp/w3 2>&1 &
    wait
    cat /tmp/w1 /tmp/w2 /tmp/w3 | grep . && fail "a concurrent knob write failed (cycle $i)"
    i=$((i + 1))
done
echo 0 > $K/enabled
expect_eq "$(cat $K/enabled)" 0 "enabled after the races"
sh -c "echo 1 > $K/heap_bytes_used" 2>/dev/null && fail "heap_bytes_used accepted a write"
sh -c "echo 1 > $K/heap_bytes_tables" 2>/dev/null && fail "heap_bytes_tables accepted a write"
kdbt_unload
