#!/bin/sh
# KASLR: no kdbt address reaches an unprivileged user. /kdbt/bin/kaslr, as
# uid 1000 on each online CPU under translation, sees the same sidt/sgdt
# results as natively (UMIP: the kernel emulates them with fixed dummy bases,
# translated as natively; the shadow IDT's base never shows), and no number
# that could be a kernel address in any file it can read under
# /sys/kernel/kdbt or /sys/module/kdbt. Skipped where the kernel does not
# enable UMIP (the small kernel, older CPUs): there user sidt shows the IDT
# base, translated the shadow IDT's (docs/kernel.md, limits).
. ./lib.sh
dmesg | grep -q "User Mode Instruction Prevention (UMIP) activated" || { echo "UMIP is not active"; exit 4; }
K=/sys/kernel/kdbt
P=/kdbt/bin/kaslr
$P > /tmp/kaslr.native 2>&1 || { cat /tmp/kaslr.native; fail "native run failed"; }
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
for c in $(online_cpus); do
    taskset -c $c $P $K /sys/module/kdbt > /tmp/kaslr.out 2>&1 || { cat /tmp/kaslr.out; fail "run on CPU $c failed"; }
    grep '^leak:' /tmp/kaslr.out && fail "CPU $c: a kernel address readable by uid 1000"
    grep -v '^leak:' /tmp/kaslr.out > /tmp/kaslr.translated
    diff /tmp/kaslr.native /tmp/kaslr.translated || fail "CPU $c: descriptor tables seen differently translated"
done
cat /tmp/kaslr.native
echo "files readable by uid 1000: $(find $K /sys/module/kdbt -type f -perm -004 | wc -l), none holding a kernel address"
echo 0 > $K/enabled
kdbt_unload
