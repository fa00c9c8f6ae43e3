#!/bin/sh
# Translation on: a shell workload runs from the code cache, statistics move,
# translation goes off again and the module unloads.
. ./lib.sh
kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
expect_eq "$(cat /sys/kernel/kdbt/enabled)" 1 "enabled after echo 1"
out=$(seq 1 2000 | sort -rn | head -2 | tr '\n' ' ')
expect_eq "$out" "2000 1999 " "pipeline output under translation"
for f in blocks_translated dispatcher_entries pc_rewrites cache_bytes_used; do
    echo "$f $(cat /sys/kernel/kdbt/stats/$f)"
done
cat /sys/kernel/kdbt/stats/entries_by_vector
echo 0 > /sys/kernel/kdbt/enabled || fail "disable failed"
blocks=$(cat /sys/kernel/kdbt/stats/blocks_translated)
[ "$blocks" -gt 1000 ] || fail "only $blocks blocks translated"
kdbt_unload
