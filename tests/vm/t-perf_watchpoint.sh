#!/bin/sh
# A perf write watchpoint (HW_BREAKPOINT_W, 8 bytes) on a user buffer that
# the kernel writes (read() from /dev/zero and from a pipe): the sampled IPs,
# mapped to kernel functions, must be kernel text (_stext.._etext, not kdbt
# or code-cache addresses) and the same list translated as natively.
. ./lib.sh
W=/kdbt/bin/watchpoint
$W > /tmp/wp.native 2>&1 || { cat /tmp/wp.native; fail "native watchpoint run failed"; }
echo "native:"; cat /tmp/wp.native
kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
$W > /tmp/wp.translated 2>&1
rc=$?
echo 0 > /sys/kernel/kdbt/enabled || fail "disable failed"
echo "translated (exit $rc):"; cat /tmp/wp.translated
diff /tmp/wp.native /tmp/wp.translated || fail "translated samples differ from native"
[ $rc -eq 0 ] || fail "translated watchpoint run exited $rc"
kdbt_unload
