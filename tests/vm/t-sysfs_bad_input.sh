#!/bin/sh
# Bad sysfs writes fail with EINVAL and change nothing.
. ./lib.sh
kdbt_load
K=/sys/kernel/kdbt
bad() { # file value
    before=$(cat "$1" 2>/dev/null)
    err=$(sh -c "echo '$2' > $1" 2>&1) && fail "writing '$2' to $1 succeeded"
    echo "$err" | grep -q 'Invalid argument' || fail "writing '$2' to $1: '$err', want Invalid argument"
    [ "$(cat "$1" 2>/dev/null)" = "$before" ] || fail "$1 changed after a bad write"
}
for v in garbage 2 -1 "" " 1" 01x 99999999999999999999; do bad $K/enabled "$v"; done
for v in 0 2047 abc -5 999999999; do bad $K/cache_kb "$v"; done
for v in 0 2 yes; do bad $K/flush "$v"; done
echo 3072 > $K/cache_kb || fail "valid cache_kb rejected"
expect_eq "$(cat $K/cache_kb)" 3072 "cache_kb"
echo 1 > $K/enabled || fail "enable failed"
bad $K/cache_kb 256
expect_eq "$(cat $K/cache_kb)" 3072 "cache_kb while enabled"
echo 1 > $K/flush || fail "flush failed"
echo 0 > $K/enabled
expect_eq "$(cat $K/enabled)" 0 "enabled"
kdbt_unload
