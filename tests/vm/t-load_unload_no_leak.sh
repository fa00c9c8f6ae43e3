#!/bin/sh
# 20 load/unload cycles leave memory where it was, within noise.
# kdbt's memory is module memory and its vmalloc'ed heap (VmallocUsed) plus
# kmalloc (Slab): those must come back exactly. MemFree is checked loosely:
# freed pages settle in per-CPU page lists, which it does not count, and
# each load moves tens of MB through them.
. ./lib.sh
meminfo() { grep "^$1:" /proc/meminfo | tr -s ' ' | cut -d' ' -f2; }
cycles() {
    i=0
    while [ $i -lt "$1" ]; do kdbt_load; kdbt_unload; i=$((i + 1)); done
}
cycles 5
free0=$(meminfo MemFree); slab0=$(meminfo Slab); vm0=$(meminfo VmallocUsed)
for round in 1 2 3 4; do
    cycles 5
    echo "after $((round * 5)) cycles: MemFree $(meminfo MemFree) kB Slab $(meminfo Slab) kB VmallocUsed $(meminfo VmallocUsed) kB"
done
free1=$(meminfo MemFree); slab1=$(meminfo Slab); vm1=$(meminfo VmallocUsed)
echo "MemFree ${free0} -> ${free1} kB, Slab ${slab0} -> ${slab1} kB, VmallocUsed ${vm0} -> ${vm1} kB"
[ $((free0 - free1)) -lt 65536 ] || fail "MemFree dropped by $((free0 - free1)) kB over 20 cycles"
[ $((slab1 - slab0)) -lt 256 ] || fail "Slab grew by $((slab1 - slab0)) kB over 20 cycles"
[ $((vm1 - vm0)) -lt 256 ] || fail "VmallocUsed grew by $((vm1 - vm0)) kB over 20 cycles"
