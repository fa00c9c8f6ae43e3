#!/bin/sh
# After `echo 0` and after rmmod, no kernel stack holds an address into the
# code kdbt had (its thunk pages and code caches, from code_ranges). The scan
# is kdbt_stackscan's, a separate module: every sleeping task's stack, idle
# tasks included, with every CPU stopped. The kernel's text range is scanned
# beside them and must be found, so the scan reads real stacks. While
# translating, dead code-cache addresses may sit in stack slots (an inline
# lookup's target below the stack pointer); leaving translation rewrites them
# (stats/stack_words_rewritten).
. ./lib.sh
insmod /kdbt/modules/kdbt_stackscan.ko || fail "insmod kdbt_stackscan failed"
text=$(awk '$3 == "_stext" { s = $1 } $3 == "_etext" { e = $1 } END { print s, e }' /proc/kallsyms)
[ -n "$text" ] || fail "no _stext/_etext in /proc/kallsyms"
# scan WHAT: scans for the kernel text and the ranges in $ranges; sets
# $text_found and $kdbt_found and prints one line.
scan() {
    echo "$text $ranges" > /proc/kdbt_stackscan || fail "scan ($1) failed"
    out=$(cat /proc/kdbt_stackscan)
    text_found=$(echo "$out" | awk '$1 == "range" && $2 == 0 { print $4 }')
    kdbt_found=$(echo "$out" | awk '$1 == "range" && $2 > 0 { n += $4 } END { print n + 0 }')
    first=$(echo "$out" | awk '$1 == "range" && $2 > 0 && $4 > 0 { $1 = $2 = $3 = $4 = ""; print; exit }')
    echo "$1: $(echo "$out" | head -1), kernel text words $text_found, kdbt code words $kdbt_found$first"
    [ "${text_found:-0}" -gt 100 ] || fail "scan ($1) found only ${text_found:-0} kernel text addresses: it does not read stacks"
}
kdbt_load
# Sleepers that entered the kernel under translation.
start_load all
i=0
while [ $i -lt 5 ]; do
    echo 1 > /sys/kernel/kdbt/enabled || fail "enable $i failed"
    sleep 30 &
    sleepers="$sleepers $!"
    usleep 500000
    ranges=$(awk '{ print $2, $3 }' /sys/kernel/kdbt/code_ranges)
    [ -n "$ranges" ] || fail "code_ranges is empty while translating"
    scan "translating $i"
    scans=$(kdbt_stat stack_scans)
    echo 0 > /sys/kernel/kdbt/enabled || fail "disable $i failed"
    expect_eq "$(kdbt_stat stack_scans)" $((scans + 1)) "stack_scans after disable $i"
    scan "disabled $i"
    [ "$kdbt_found" = 0 ] || fail "after disable $i, $kdbt_found stack words point into freed kdbt code"
    i=$((i + 1))
done
echo "stack_words_rewritten $(kdbt_stat stack_words_rewritten) over $i disables"
echo 1 > /sys/kernel/kdbt/enabled || fail "final enable failed"
usleep 500000
ranges=$(awk '{ print $2, $3 }' /sys/kernel/kdbt/code_ranges)
kdbt_unload
scan "after rmmod"
[ "$kdbt_found" = 0 ] || fail "after rmmod, $kdbt_found stack words point into freed kdbt code"
stop_load
kill $sleepers 2>/dev/null
wait $sleepers 2>/dev/null
rmmod kdbt_stackscan || fail "rmmod kdbt_stackscan failed"
