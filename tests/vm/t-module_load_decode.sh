#!/bin/sh
# kdbt loads, logs iced-x86's decoding of kfree (checked against objdump on
# the host through the "decode:" lines), and unloads cleanly.
. ./lib.sh
dmesg -c >/dev/null
kdbt_load
[ -d /sys/module/kdbt ] || fail "/sys/module/kdbt missing after insmod"
dmesg | grep -q 'kdbt: loaded' || fail "no 'kdbt: loaded' in the log"
lines=$(dmesg | grep -c 'kdbt: decode kfree')
expect_eq "$lines" 8 "decoded instructions logged"
addr=$(grep ' kfree$' /proc/kallsyms | cut -d' ' -f1)
first=$(dmesg | grep 'kdbt: decode kfree' | head -1 | sed 's/.*kfree 0x\([0-9a-f]*\) .*/\1/')
expect_eq "$first" "$(echo "$addr" | sed 's/^0*//')" "first decoded address vs kallsyms kfree"
dmesg | grep 'kdbt: decode kfree' | sed 's/.*kdbt: decode /decode: /'
kdbt_unload
[ ! -d /sys/module/kdbt ] || fail "/sys/module/kdbt still present after rmmod"
dmesg | grep -q 'kdbt: unloaded' || fail "no 'kdbt: unloaded' in the log"
