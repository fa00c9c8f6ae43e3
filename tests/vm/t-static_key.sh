#!/bin/sh
# A static key flipped while other CPUs run its branch: kdbt_skey.ko
# (tests/vm/modules/skey) and /kdbt/bin/skey, one reader thread pinned to
# each online CPU, 1000 flips (200 with kdbt_test.quick=1).
# - shell: 4 flips, each read back on every CPU;
# - skey lockstep: after each flip every reader reads twice and must see the
#   new state (a CPU still running a stale translation of the branch fails);
# - skey concurrent (translated only): readers read in a loop while the key
#   flips; reads that ran between two flips must show that interval's state.
#   Not run natively: under QEMU's multi-threaded TCG a vCPU translating the
#   branch while another writes the final byte can keep a stale translation
#   of the kernel's temporary int3, and the kernel then oopses on an int3
#   nobody is patching (seen natively, "Oops: int3" at skey_branch); under
#   kdbt the guest never executes the patched bytes themselves.
. ./lib.sh
K=/sys/kernel/kdbt
S=/kdbt/bin/skey
FLIPS=$([ "$(cmdline_opt quick 0)" = 1 ] && echo 200 || echo 1000)
cpus=$(online_cpus)
flip_reads() { # what: 4 flips from the shell, each read back on every CPU
    for v in 1 0 1 0; do
        echo $v > /proc/kdbt_skey || fail "$1: writing $v failed"
        for c in $cpus; do
            set -- "$1" $(taskset -c "$c" cat /proc/kdbt_skey)
            [ "$2" = $v ] && [ "$3" = "$4" ] || fail "$1: CPU $c read '$2 $3 $4' after writing $v"
        done
    done
    echo "$1: 4 flips from the shell read back right on CPUs $(echo $cpus)"
}
insmod /kdbt/modules/kdbt_skey.ko || fail "insmod kdbt_skey failed"
expect_eq "$(cat /proc/kdbt_skey)" "0 0 0" "first read"
echo 1 > /proc/kdbt_skey; expect_eq "$(cat /proc/kdbt_skey)" "1 2 2" "read after enabling"
echo 1 > /proc/kdbt_skey; expect_eq "$(cat /proc/kdbt_skey)" "1 2 2" "read after enabling again"
echo 0 > /proc/kdbt_skey; expect_eq "$(cat /proc/kdbt_skey)" "0 4 4" "read after disabling"
flip_reads native
$S lockstep $FLIPS > /tmp/skey.native 2>&1 || { cat /tmp/skey.native; fail "native lockstep run failed"; }
echo "native: $(cat /tmp/skey.native)"
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
flip_reads translated
for mode in lockstep concurrent; do
    $S $mode $FLIPS > /tmp/skey.translated 2>&1
    rc=$?
    echo "translated (exit $rc): $(cat /tmp/skey.translated | tr '\n' ';')"
    [ $rc -eq 0 ] || { echo 0 > $K/enabled; fail "translated $mode run failed: a read saw the key in the wrong state"; }
done
flip_reads "translated, after the flips"
echo 0 > $K/enabled || fail "disable failed"
echo "$(inval_stats)"
kdbt_unload
rmmod kdbt_skey || fail "rmmod kdbt_skey failed"
