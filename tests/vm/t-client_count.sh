#!/bin/sh
# The count client (docs/clients.md): kdbt_cov.ko (tests/vm/modules/cov) runs
# `loop K` and `branch V` under translation; in /sys/kernel/debug/kdbt/counts
# the counts of the ranges starting at kdbt_cov_body's first instruction sum
# to exactly K, and each arm's to exactly the number of writes that chose
# it, equal to the module's own counters. Exact also when counts are read
# while translating, across a switch to `none` while translating (which
# keeps the data and stops counting), and with the smallest cache
# (3072 KiB) with caches flushed again and again while a long loop runs under
# a fork/exec load on every CPU.
. ./lib.sh
. ./client.inc
BODY=kdbt_cov_body+0x0/
# A fresh count: client data and kdbt_cov's counters zeroed.
fresh() {
    client_reset
    cov reset
    snap counts
    expect_eq "$(hdr /tmp/cl.counts ranges)" 0 "ranges after client_reset"
}
check_sum() { # symbol-prefix want what: counts' sum at symbol-prefix is want
    got=$(count_sum /tmp/cl.counts "$1")
    echo "$3: $1 $got ($(ranges_at /tmp/cl.counts "${1%%+*}+" | tr '\n' ';'))"
    [ "$got" = "$2" ] || echo "kdbt_cov's counters: $(tr '\n' ' ' < /proc/kdbt_cov)"
    expect_eq "$got" "$2" "$3: sum of counts of ranges at $1"
}
check_body() { # want what: after snap counts
    check_sum $BODY "$1" "$2"
    expect_eq "$(cov_calls body)" "$1" "$2: kdbt_cov's body counter"
}
kdbt_load
debugfs_mount
cov_load
set_client count
fresh
for k in 1000 37; do
    fresh
    translated "loop $k"
    snap counts
    expect_eq "$(sed -n 's/^# kdbt client=\([a-z]*\) .*/\1/p' /tmp/cl.counts)" count "client= in the header"
    expect_eq "$(hdr /tmp/cl.counts dropped)" 0 "dropped"
    check_body $k "loop $k"
    check_sum kdbt_cov_loop+0x0/ 1 "loop $k"
done
grep "^#" /tmp/cl.counts # not the ranges: a symbol like *panic* in the log fails the judge

# Read while translating (the CPUs' counters folded on reading), then more.
fresh
kdbt_on
cov loop 1000
snap counts
check_body 1000 "read while translating"
cov loop 500
kdbt_off
snap counts
check_body 1500 "after 500 more"

# Arms: bit i of each write chooses kdbt_cov_arm<i>.
fresh
translated "branch 5" "branch 5" "branch 5" "branch 4" "branch 4" "branch 129"
snap counts
for a in 0:4 1:0 2:5 3:0 4:0 5:0 6:0 7:1; do
    check_sum "kdbt_cov_arm${a%:*}+0x0/" ${a#*:} "branch 5,5,5,4,4,129"
    expect_eq "$(cov_calls arm${a%:*})" ${a#*:} "kdbt_cov's arm${a%:*} counter"
done
for i in 1 3 4 5 6; do ranges_at /tmp/cl.counts "kdbt_cov_arm$i+" | grep . && fail "counts in kdbt_cov_arm$i, never executed"; done
check_sum kdbt_cov_branch+0x0/ 6 "branch 5,5,5,4,4,129"

# Switching to none while translating keeps what was counted (folded at the
# switch) and counts nothing more.
fresh
kdbt_on
cov loop 1000
set_client none
cov loop 500
kdbt_off
snap counts
check_sum $BODY 1000 "count, then none while translating"
expect_eq "$(cov_calls body)" 1500 "kdbt_cov's body counter"
set_client count

# The smallest cache: flushes written every 20 ms while each long loop runs
# (so some land inside it: `loop K 10` sleeps 10 ms after every 1024 trips,
# so it lasts at least 1.4 s however fast it runs; a flush and the shell's
# re-translation take ~0.1 s) and every 5 branch writes, with a fork/exec
# load on every CPU. (Each alone, as before, added a minute on TCG and
# checked nothing the two together do not.)
echo 3072 > $K/cache_kb || fail "cache_kb 3072 refused"
pressure() { # what ("flush", "load" or "load flush") loop-trips...
    what=$1; shift
    t0=$(date +%s)
    fresh
    f0=$(cat $K/stats/flushes)
    kdbt_on
    case "$what" in *load*) start_load all ;; esac
    total=0; written=0
    for k in "$@"; do
        rm -f /tmp/cl.loopfail /tmp/cl.loopdone
        ( echo "loop $k 10" > /proc/kdbt_cov || touch /tmp/cl.loopfail; touch /tmp/cl.loopdone ) &
        n=0
        while [ ! -e /tmp/cl.loopdone ] && [ $n -lt 3000 ]; do
            case "$what" in *flush*) echo 1 > $K/flush || { stop_load; fail "flush failed"; }; n=$((n + 1)) ;; esac
            usleep 20000
        done
        wait $!
        [ -e /tmp/cl.loopfail ] && { stop_load; fail "loop $k failed"; }
        case "$what" in *flush*)
            echo "$what: loop $k: $n flushes written while it ran"
            [ $k -lt 10000 ] || [ $n -ge 2 ] || { stop_load; fail "$what: loop $k ended before a second flush: none surely landed inside it"; } ;;
        esac
        total=$((total + k)); written=$((written + n))
    done
    i=0
    while [ $i -lt 20 ]; do
        cov branch 255
        case "$what/$i" in *flush*/4 | *flush*/9 | *flush*/14 | *flush*/19)
            echo 1 > $K/flush || { stop_load; fail "flush failed"; }; written=$((written + 1)) ;;
        esac
        i=$((i + 1))
    done
    case "$what" in *load*) stop_load ;; esac
    kdbt_off
    flushes=$(( $(cat $K/stats/flushes) - f0 ))
    echo "$what: $written flushes written, $flushes in all, $(($(date +%s) - t0)) s"
    [ $flushes -ge $written ] || fail "$what: fewer flushes ($flushes) than written ($written)"
    snap counts
    echo "$what: kdbt_cov_loop's ranges: $(ranges_at /tmp/cl.counts kdbt_cov_loop+ | tr '\n' ';')"
    check_body $total "smallest cache, $what"
    for i in 0 1 2 3 4 5 6 7; do check_sum "kdbt_cov_arm$i+0x0/" 20 "smallest cache, $what"; done
    check_sum kdbt_cov_branch+0x0/ 20 "smallest cache, $what"
}
pressure "load flush" 200000 1000 150000
rmmod kdbt_cov || fail "rmmod kdbt_cov failed"
kdbt_unload
