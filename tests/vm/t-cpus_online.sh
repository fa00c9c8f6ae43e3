#!/bin/sh
# Every vCPU is online: kdbt_test.cpus=N on the kernel command line (set by
# scripts/vm-test.sh from -smp), default 2; and kdbt_test.possible=M CPUs
# are possible (-smp N,maxcpus=M), default N.
. ./lib.sh
n=$(cmdline_opt cpus 2)
want=$([ "$n" = 1 ] && echo 0 || echo "0-$((n - 1))")
expect_eq "$(cat /sys/devices/system/cpu/online)" "$want" "online CPUs"
expect_eq "$(grep -c ^processor /proc/cpuinfo)" "$n" "processors in /proc/cpuinfo"
echo "online $(cat /sys/devices/system/cpu/online), possible $(cat /sys/devices/system/cpu/possible)"
p=$(cmdline_opt possible "$n")
want=$([ "$p" = 1 ] && echo 0 || echo "0-$((p - 1))")
expect_eq "$(cat /sys/devices/system/cpu/possible)" "$want" "possible CPUs (this kernel counts QEMU's disabled MADT entries only when it detects a hypervisor; TCG is not one)"
