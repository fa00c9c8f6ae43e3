#!/bin/sh
# Every vCPU is online: kdbt_test.cpus=N on the kernel command line (set by
# scripts/vm-test.sh from -smp), default 2.
. ./lib.sh
n=$(cmdline_opt cpus 2)
want=$([ "$n" = 1 ] && echo 0 || echo "0-$((n - 1))")
expect_eq "$(cat /sys/devices/system/cpu/online)" "$want" "online CPUs"
expect_eq "$(grep -c ^processor /proc/cpuinfo)" "$n" "processors in /proc/cpuinfo"
echo "online $(cat /sys/devices/system/cpu/online), possible $(cat /sys/devices/system/cpu/possible)"
