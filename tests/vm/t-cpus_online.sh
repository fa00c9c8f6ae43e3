#!/bin/sh
# Both vCPUs are online.
. ./lib.sh
expect_eq "$(cat /sys/devices/system/cpu/online)" "0-1" "online CPUs"
expect_eq "$(grep -c ^processor /proc/cpuinfo)" "2" "processors in /proc/cpuinfo"
