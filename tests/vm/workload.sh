#!/bin/sh
# `make run`'s guest side: load kdbt, run a short workload, report, unload.
echo "=== kdbt run ==="
dmesg -c >/dev/null
insmod /kdbt/kdbt.ko || { echo "insmod failed"; echo "=== end ==="; exit 1; }
echo "--- kdbt decoded the start of kfree with iced-x86, in the kernel:"
dmesg | grep 'kdbt: decode' | sed 's/^\[[^]]*\] //'
echo "--- workload: shell pipeline over /proc and a tmpfs file"
seq 1 20000 | sort -rn | head -3
dd if=/dev/zero of=/tmp/f bs=64k count=64 2>/dev/null && md5sum /tmp/f
rmmod kdbt
dmesg | grep 'kdbt:' | grep -v decode | sed 's/^\[[^]]*\] //'
echo "=== end ==="
