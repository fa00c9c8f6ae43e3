#!/bin/sh
# Code at the very end of a text mapping: kdbt_edge.ko's kdbt_edge_fn ends
# at the last byte of the module's text, and the next page is vmalloc's
# unmapped guard page. Reading /proc/kdbt_edge calls it. Read natively, then
# translated on every online CPU: the outputs must match (a translator that
# fetches past the final ret must not fault).
. ./lib.sh
M=kdbt_edge
insmod /kdbt/modules/$M.ko || fail "insmod $M failed"
trap 'rmmod $M 2>/dev/null' EXIT
fn=$(awk '$3 == "kdbt_edge_fn" { print $1 }' /proc/kallsyms)
sec=$(cat /sys/module/$M/sections/.text.kdbt_edge)
text=$(cat /sys/module/$M/sections/.text)
[ -n "$fn" ] || fail "kdbt_edge_fn not in /proc/kallsyms"
fn=$((0x$fn)); sec=$((sec)); text=$((text))
end=$(( (fn | 4095) + 1 ))
printf 'module .text %#x, .text.kdbt_edge %#x, kdbt_edge_fn %#x, page end %#x (%d bytes after the function start)\n' \
    $text $sec $fn $end $((end - fn))
[ $((end - fn)) -le 64 ] || fail "kdbt_edge_fn starts $((end - fn)) bytes before its page end (want it to end there)"
[ $((sec + 4096)) -eq $end ] || fail "kdbt_edge_fn does not end at the end of .text.kdbt_edge"
# The vmalloc area holding the module text: the page after the function
# must be its guard page (vmallocinfo sizes include the guard page).
# vmallocinfo prints %pK addresses: real ones to root with kptr_restrict 1.
kr=$(cat /proc/sys/kernel/kptr_restrict)
echo 1 > /proc/sys/kernel/kptr_restrict
cp /proc/vmallocinfo /tmp/vmallocinfo
echo "$kr" > /proc/sys/kernel/kptr_restrict
area=$(awk -v a=$text '{ split($1, r, "-"); s = r[1]; e = r[2]; print s, e }' /tmp/vmallocinfo |
    while read -r s e; do
        [ $((s)) -le $text ] && [ $text -lt $((e)) ] && { echo "$s $e"; break; }
    done)
[ -n "$area" ] || fail "no /proc/vmallocinfo area holds the module text"
set -- $area
grep "^$1-" /tmp/vmallocinfo
[ $(($2 - 4096)) -eq $end ] || fail "the page after kdbt_edge_fn ($(printf %#x $end)) is not the guard page of $1-$2"
awk -v e=$(printf %x $end) '{ split($1, r, "-"); if (r[1] == "0x" e) { print "mapped: " $0; bad = 1 } } END { exit bad }' /tmp/vmallocinfo ||
    fail "another vmalloc area starts right after kdbt_edge_fn"
echo "the page after kdbt_edge_fn is unmapped (guard page of $1-$2)"

values="0 1 2 3 255 4096 65535 123456789 18446744073709551615"
reads() { # prints "value result" for each of $values, on CPU $1
    for v in $values; do
        echo $v > /proc/kdbt_edge || fail "write $v failed"
        taskset -c "$1" cat /proc/kdbt_edge || fail "read on CPU $1 failed"
    done
}
cpus=$(online_cpus)
reads 0 > /tmp/edge.native
for c in $cpus; do reads $c > /tmp/edge.native.$c; diff /tmp/edge.native /tmp/edge.native.$c || fail "native reads differ on CPU $c"; done
cat /tmp/edge.native
[ "$(sed -n 1p /tmp/edge.native)" != "0 0" ] || fail "kdbt_edge_fn(0) = 0: the function did not run"

kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
for c in $cpus; do
    reads $c > /tmp/edge.translated.$c
    diff /tmp/edge.native /tmp/edge.translated.$c || { echo 0 > /sys/kernel/kdbt/enabled; fail "translated reads on CPU $c differ from native"; }
done
echo "translated on CPUs $(echo $cpus): blocks $(cat /sys/kernel/kdbt/stats/blocks_translated)"
echo 0 > /sys/kernel/kdbt/enabled || fail "disable failed"
kdbt_unload
rmmod $M || fail "rmmod $M failed"
trap - EXIT
