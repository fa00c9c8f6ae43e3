#!/bin/sh
# Classic BPF socket filters, JIT-compiled into reused memory:
# /kdbt/bin/bpf_filter alternates 50 times (20 with kdbt_test.quick=1) between
# an AF_UNIX datagram socket pair whose receiver's filter accepts everything
# (all 10 datagrams arrive) and, after closing it, a new pair whose filter
# drops everything (none arrive); each freed filter's JIT image makes room for
# the next, opposite one. Natively, then translated (translated code must not
# run the freed filter's image in place of the new one): the same counts.
. ./lib.sh
K=/sys/kernel/kdbt
B=/kdbt/bin/bpf_filter
ROUNDS=$([ "$(cmdline_opt quick 0)" = 1 ] && echo 20 || echo 50)
J=/proc/sys/net/core/bpf_jit_enable
if [ -f $J ]; then
    echo "bpf_jit_enable $(cat $J)"
    [ "$(cat $J)" = 1 ] || fail "bpf_jit_enable is $(cat $J), want 1 (the JIT, whose images are code)"
else
    echo "no $J: this kernel has no BPF JIT; the filters run in the interpreter"
fi
$B $ROUNDS > /tmp/bpf.native 2>&1 || { cat /tmp/bpf.native; fail "native run failed"; }
echo "native: $(cat /tmp/bpf.native)"
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
$B $ROUNDS > /tmp/bpf.translated 2>&1
rc=$?
echo 0 > $K/enabled || fail "disable failed"
echo "translated (exit $rc): $(cat /tmp/bpf.translated | tr '\n' ';')"
diff /tmp/bpf.native /tmp/bpf.translated || fail "translated deliveries differ from native"
echo "blocks $(cat $K/stats/blocks_translated); $(inval_stats)"
kdbt_unload
