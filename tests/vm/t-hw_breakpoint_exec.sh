#!/bin/sh
# A perf execute breakpoint (HW_BREAKPOINT_X) on __x64_sys_getppid, counting
# for one task: 1000 getppid() calls give exactly 1000 hits, natively and
# translated (translated code runs from the cache, so kdbt has to make the
# breakpoint on the native address count).
. ./lib.sh
B=/kdbt/bin/hwbp_exec
N=1000
grep -q ' __x64_sys_getppid$' /proc/kallsyms || fail "__x64_sys_getppid not in /proc/kallsyms"
$B $N > /tmp/bp.native 2>&1 || { cat /tmp/bp.native; fail "native breakpoint run failed"; }
echo "native: $(cat /tmp/bp.native)"
expect_eq "$(cat /tmp/bp.native)" "hwbp_exec __x64_sys_getppid: $N hits for $N getppid calls" "native count"
kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
$B $N > /tmp/bp.translated 2>&1
rc=$?
echo 0 > /sys/kernel/kdbt/enabled || fail "disable failed"
echo "translated (exit $rc): $(cat /tmp/bp.translated)"
diff /tmp/bp.native /tmp/bp.translated || fail "translated count differs from native"
kdbt_unload
