#!/bin/sh
# The clients' knobs (docs/clients.md): bad writes to client and
# client_reset give EINVAL and change nothing (the client, the recorded
# data), translation off and on; switching the client while translating
# flushes the caches (a block translated before the switch is recorded or
# counted when it runs after it) and, switched 10 times under the workload
# (with 200 fork+exec), keeps its output identical to native; uid 1000 cannot read the
# debugfs files nor write the knobs, and nothing changes or breaks when it
# tries.
. ./lib.sh
. ./client.inc
. ./workload.inc
U=/kdbt/bin/asuser
# Every switch flushes every cache: 200 fork+exec (as with kdbt_test.quick=1)
# are enough load for them and keep the run short.
workload_forks=200
t0=$(date +%s)
workload > /tmp/native.out 2>&1
native_s=$(($(date +%s) - t0))
kdbt_load
debugfs_mount
cov_load
expect_eq "$(cat $K/client)" none "client after insmod"
set_client coverage
client_reset
translated "branch 1"
snap coverage
cp /tmp/cl.coverage /tmp/cl.ref
arms_recorded /tmp/cl.ref 1
# Bad writes; reset (which would empty the data) last, so that a bad write
# to client_reset that resets shows.
bad_writes() {
    for v in garbage "" Coverage COUNT cov coverage2 nonee "coverage count" " coverage" "none " 0 1; do
        bad_write $K/client "$v"
    done
    for v in 0 2 -1 yes garbage "" " 1" 11 "1 1" 0x1; do bad_write $K/client_reset "$v"; done
}
bad_writes
expect_eq "$(cat $K/client)" coverage "client after the bad writes"
snap coverage
cmp -s /tmp/cl.ref /tmp/cl.coverage || fail "coverage data changed after the bad writes"
echo "bad writes refused with translation off, data unchanged"
kdbt_on
bad_writes
expect_eq "$(cat $K/client)" coverage "client after the bad writes while translating"
expect_eq "$(cat $K/enabled)" 1 "enabled after the bad writes"
snap coverage
arms_recorded /tmp/cl.coverage 1
echo "bad writes refused while translating, data kept ($(hdr /tmp/cl.coverage ranges) ranges)"

# Switches while translating flush: arm0, translated under coverage, runs
# under count after the switch and is counted; counted, it runs under
# coverage after the next switch and is recorded (the count client's data
# was not coverage's).
set_client count
cov branch 1
snap counts
check_arm0=$(count_sum /tmp/cl.counts kdbt_cov_arm0+0x0/)
expect_eq "$check_arm0" 1 "arm0's count after switching coverage -> count while translating"
set_client coverage
snap coverage
ranges_at /tmp/cl.coverage kdbt_cov_arm0+ | grep . && fail "coverage kept arm0's range across count"
cov branch 1
snap coverage
arms_recorded /tmp/cl.coverage 1
echo "switches while translating: arm0 counted, then recorded again"

# The workload while the client changes every 250 ms, 10 times, then runs on.
# Each switch flushes every cache and stops every CPU: on TCG one costs
# seconds of re-translation, so more would make the test crawl (24 took
# 194 s, docs/testing.md).
rm -f /tmp/cl.done
t0=$(date +%s)
( workload > /tmp/translated.out 2>&1; touch /tmp/cl.done ) &
wl=$!
switches=0
for c in count none coverage count coverage none none count coverage coverage; do
    [ -e /tmp/cl.done ] && break
    set_client $c
    switches=$((switches + 1))
    [ $((switches % 5)) = 0 ] && client_reset
    usleep 250000
done
wait $wl
kdbt_off
echo "$switches client switches while the workload ran; it took $(($(date +%s) - t0)) s ($native_s s natively)"
[ $switches -ge 6 ] || fail "only $switches switches: the workload ended first"
diff /tmp/native.out /tmp/translated.out || fail "translated output differs from native while the client switched"

# uid 1000, translation off and on.
set_client coverage
client_reset
translated "branch 2"
snap coverage
cp /tmp/cl.coverage /tmp/cl.ref
ls -ld / /sys/kernel/debug $D; ls -l $D | grep -v '^total'
$U true || fail "$U true failed: cannot run as uid 1000"
$U id
unprivileged() {
    for f in coverage coverage.drcov counts; do
        out=$($U cat $D/$f 2>&1) && fail "uid 1000 read $D/$f"
        echo "$out" | grep -q 'Permission denied' || fail "uid 1000 reading $D/$f: '$out', want Permission denied"
        out=$($U sh -c "echo 1 > $D/$f" 2>&1) && fail "uid 1000 wrote $D/$f"
    done
    for w in client:count client:none client_reset:1 enabled:0 enabled:1 flush:1; do
        out=$($U sh -c "echo ${w#*:} > $K/${w%%:*}" 2>&1) && fail "uid 1000 wrote ${w#*:} to $K/${w%%:*}"
        echo "$out" | grep -q 'Permission denied' || fail "uid 1000 writing $K/${w%%:*}: '$out', want Permission denied"
    done
    expect_eq "$(cat $K/client)" coverage "client after uid 1000's writes"
    expect_eq "$(cat $K/enabled)" $1 "enabled after uid 1000's writes"
}
unprivileged 0
snap coverage
cmp -s /tmp/cl.ref /tmp/cl.coverage || fail "coverage data changed after uid 1000's writes"
kdbt_on
unprivileged 1
cov branch 4
kdbt_off
snap coverage
arms_recorded /tmp/cl.coverage 6
echo "uid 1000: debugfs reads and knob writes refused, translation off and on; data kept"
rmmod kdbt_cov || fail "rmmod kdbt_cov failed"
kdbt_unload
