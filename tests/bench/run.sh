#!/bin/sh
# Guest side of `make bench` (run by /init in mode bench): the lmbench-style
# suite natively, then with the kernel translated by kdbt, then translated
# with each instrumentation client (docs/clients.md: count, then coverage),
# in the same boot. scripts/bench.sh reads the result sets between the ===
# markers (native, translated..., count, coverage).
# Kernel command-line options: kdbt.bench_scale=PERCENT scales the iteration
# counts; kdbt.bench_passes=N runs the translated suite N times in a row
# (markers "translated", then "translated2" ... "translatedN").
# kdbt.bench_wall=R (wall-time runs, without -icount): R rounds of a native
# then a translated pass, markers "native"/"translated", then "native2"/
# "translated2" ...; no client passes.
scale=100
passes=1
wall=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        kdbt.bench_scale=*) scale="${arg#kdbt.bench_scale=}" ;;
        kdbt.bench_passes=*) passes="${arg#kdbt.bench_passes=}" ;;
        kdbt.bench_wall=*) wall="${arg#kdbt.bench_wall=}" ;;
    esac
done
bin=/kdbt/bin/lmbench
# Same address-space layout in every pass: with ASLR on, where mmap places a
# region (and so whether it merges with a neighbour) varies run to run.
echo 0 > /proc/sys/kernel/randomize_va_space
st=/sys/kernel/kdbt/stats
# The code-change benchmark's static key (lmbench skips it without the module).
insmod /kdbt/modules/kdbt_skey.ko || echo "kdbt-bench: FAIL insmod kdbt_skey"
# One unmeasured native pass first: under -icount the clock counts every
# vCPU's instructions, so the kernel's own after-boot work (the distro
# kernel's deferred initcalls and workers) would be charged to whichever pass
# runs first; and caches (dentries, page cache, slabs) are warm for both.
$bin "$scale" > /dev/null || echo "kdbt-bench: FAIL warm-up run exited $?"
if [ "$wall" -gt 0 ]; then
    insmod /kdbt/kdbt.ko || { echo "kdbt-bench: FAIL insmod"; exit 1; }
    i=1
    while [ "$i" -le "$wall" ]; do
        n=; [ "$i" -gt 1 ] && n=$i
        echo "=== kdbt bench native$n (scale $scale%) ==="
        $bin "$scale" || echo "kdbt-bench: FAIL native$n run exited $?"
        echo "=== kdbt bench native$n end ==="
        echo 1 > /sys/kernel/kdbt/enabled || { echo "kdbt-bench: FAIL enable"; exit 1; }
        echo "=== kdbt bench translated$n (scale $scale%) ==="
        $bin "$scale" || echo "kdbt-bench: FAIL translated$n run exited $?"
        echo "=== kdbt bench translated$n end ==="
        echo 0 > /sys/kernel/kdbt/enabled || echo "kdbt-bench: FAIL disable"
        i=$((i + 1))
    done
    rmmod kdbt || echo "kdbt-bench: FAIL rmmod"
    rmmod kdbt_skey || echo "kdbt-bench: FAIL rmmod kdbt_skey"
    echo "=== kdbt bench done ==="
    exit 0
fi
echo; echo "=== kdbt bench native (scale $scale%) ==="
$bin "$scale" || echo "kdbt-bench: FAIL native run exited $?"
echo "=== kdbt bench native end ==="
insmod /kdbt/kdbt.ko || { echo "kdbt-bench: FAIL insmod"; exit 1; }
echo 1 > /sys/kernel/kdbt/enabled || { echo "kdbt-bench: FAIL enable"; exit 1; }
e0=$(cat $st/dispatcher_entries)
i=1
while [ "$i" -le "$passes" ]; do
    name=translated; [ "$i" -gt 1 ] && name="translated$i"
    echo "=== kdbt bench $name (scale $scale%) ==="
    $bin "$scale" || echo "kdbt-bench: FAIL $name run exited $?"
    echo "=== kdbt bench $name end ==="
    i=$((i + 1))
done
e1=$(cat $st/dispatcher_entries)
echo 0 > /sys/kernel/kdbt/enabled || echo "kdbt-bench: FAIL disable"
echo "kdbt-bench: dispatcher_entries during translated run: $((e1 - e0))"
for f in blocks_translated cache_bytes_used lookup_hits lookup_misses pc_rewrites rollbacks flushes invalidations blocks_invalidated; do
    echo "kdbt-bench: stat $f $(cat $st/$f 2>/dev/null)"
done
# Where the dispatcher entries came from: IDT vectors (the rest are cache exits).
echo "kdbt-bench: entries_by_vector $(tr '\n' ' ' < $st/entries_by_vector 2>/dev/null)"
# One pass per client, each from a fresh enable with its data reset, as the
# translated pass starts from a fresh insmod; then the client's header line
# (how many blocks it recorded).
k=/sys/kernel/kdbt
grep -q '^[^ ]* /sys/kernel/debug debugfs ' /proc/mounts || mount -t debugfs none /sys/kernel/debug
for client in count coverage; do
    [ -f $k/client ] || { echo "kdbt-bench: FAIL no $k/client: no $client pass"; continue; }
    echo $client > $k/client || { echo "kdbt-bench: FAIL client $client"; continue; }
    echo 1 > $k/client_reset || echo "kdbt-bench: FAIL client_reset ($client)"
    echo 1 > $k/enabled || { echo "kdbt-bench: FAIL enable ($client)"; continue; }
    echo "=== kdbt bench $client (scale $scale%) ==="
    $bin "$scale" || echo "kdbt-bench: FAIL $client run exited $?"
    echo "=== kdbt bench $client end ==="
    echo 0 > $k/enabled || echo "kdbt-bench: FAIL disable ($client)"
    file=/sys/kernel/debug/kdbt/$([ $client = count ] && echo counts || echo coverage)
    if h="$(head -1 $file)"; then echo "kdbt-bench: client $client: $h"; else echo "kdbt-bench: FAIL reading $file"; fi
done
[ -f $k/client ] && echo none > $k/client
rmmod kdbt || echo "kdbt-bench: FAIL rmmod"
rmmod kdbt_skey || echo "kdbt-bench: FAIL rmmod kdbt_skey"
echo "=== kdbt bench done ==="
