#!/bin/sh
# The coverage client (docs/clients.md): kdbt_cov.ko (tests/vm/modules/cov)
# runs the arms chosen by `branch V` under translation, with a cache flush and
# a disable/enable between the writes; /sys/kernel/debug/kdbt/coverage then
# has a range at the first instruction of exactly the arms that ran (none in
# the others), and ranges in the syscall entry, the page-fault and the
# timer-interrupt handlers, which ran meanwhile (code KCOV does not see). The
# drcov file agrees with the text file; a reset empties both; a reset while
# translating makes the next run record again (the caches were flushed);
# `none` keeps the data and records nothing new.
. ./lib.sh
. ./client.inc
# Kernel entry work: syscalls, page faults (fork, exec, fresh pages), a
# busy shell loop and a sleep (timer interrupts).
entry_work() {
    ls /proc > /dev/null
    dd if=/dev/zero bs=64k count=16 2>/dev/null | cat > /dev/null
    i=0; while [ $i -lt 3000 ]; do i=$((i + 1)); done
    usleep 300000
}
kdbt_load
debugfs_mount
cov_load
set_client coverage
client_reset
snap coverage
expect_eq "$(hdr /tmp/cl.coverage ranges)" 0 "ranges after a reset, before any translation"
kdbt_on
cov branch 5
entry_work
f0=$(cat $K/stats/flushes)
echo 1 > $K/flush || fail "flush failed"
[ "$(cat $K/stats/flushes)" -gt "$f0" ] || fail "flushes did not grow after echo 1 > flush"
entry_work
kdbt_off
translated "branch 64"
expect_eq "$(cov_calls arm0) $(cov_calls arm1) $(cov_calls arm2) $(cov_calls arm6) $(cov_calls arm7) $(cov_calls branch)" \
    "1 0 1 1 0 2" "native counters arm0 arm1 arm2 arm6 arm7 branch"
snap coverage
grep "^#" /tmp/cl.coverage # not all ranges: a symbol like *panic* in the log fails the judge
echo "kdbt_cov's ranges:"; grep ' kdbt_cov_' /tmp/cl.coverage
expect_eq "$(sed -n 's/^# kdbt client=\([a-z]*\) .*/\1/p' /tmp/cl.coverage)" coverage "client= in the header"
expect_eq "$(hdr /tmp/cl.coverage dropped)" 0 "dropped"
grep -q '^# kaslr_offset=0x[0-9a-f]*$' /tmp/cl.coverage || fail "no '# kaslr_offset=0x<hex>' line"
grep -q '^# text=0x[0-9a-f]*-0x[0-9a-f]*$' /tmp/cl.coverage || fail "no '# text=0x<start>-0x<end>' line"
set -- $(sed -n 's/^# module kdbt_cov \(0x[0-9a-f]*\) \([0-9a-fx]*\)$/\1 \2/p' /tmp/cl.coverage)
[ $# = 2 ] || fail "no '# module kdbt_cov 0x<base> <size>' line"
arms_recorded /tmp/cl.coverage 69
for i in 0 2 6; do
    start=$(ranges_at /tmp/cl.coverage "kdbt_cov_arm$i+0x0/" | awk '{ print $1; exit }')
    [ $((start - $1)) -ge 0 ] && [ $((start - $1)) -lt $2 ] || fail "kdbt_cov_arm$i at $start, outside kdbt_cov's text $1 + $2"
done
ranges_at /tmp/cl.coverage "kdbt_cov_branch+0x0/" | grep -q . || fail "no range at kdbt_cov_branch+0x0"
ranges_at /tmp/cl.coverage "kdbt_cov_body+" | grep . && fail "ranges in kdbt_cov_body, never executed"
for re in '^entry_SYSCALL_64' '^(asm_)?exc_page_fault\+' '^(asm_)?sysvec_apic_timer_interrupt\+'; do
    has_range /tmp/cl.coverage "$re" || fail "no range in $re"
    echo "$re: $(awk -v re="$re" '{ sym = $0; sub(/^[ \t]*([^ \t]+[ \t]+){3}/, "", sym) } !/^#/ && sym ~ re' /tmp/cl.coverage | wc -l) ranges"
done
cat $D/coverage.drcov > /tmp/cl.coverage.drcov || fail "reading coverage.drcov failed"
drcov_check /tmp/cl.coverage.drcov /tmp/cl.coverage 69
# The data stays while translation is off and is read again.
cat $D/coverage > /tmp/cl.again || fail "second read of coverage failed"
cmp -s /tmp/cl.coverage /tmp/cl.again || fail "coverage changed between two reads with translation off"

client_reset
snap coverage
expect_eq "$(hdr /tmp/cl.coverage ranges)" 0 "ranges after client_reset"
cat $D/coverage.drcov > /tmp/cl.coverage.drcov || fail "reading coverage.drcov failed"
grep -aq '^BB Table: 0 bbs$' /tmp/cl.coverage.drcov || fail "drcov after client_reset: '$(grep -a '^BB Table' /tmp/cl.coverage.drcov)', want 'BB Table: 0 bbs'"
drcov_check /tmp/cl.coverage.drcov /tmp/cl.coverage 0

# A reset while translating: arm1's record goes; arm0, translated before the
# reset, is recorded again when it runs after it.
kdbt_on
cov branch 3
client_reset
cov branch 1
kdbt_off
snap coverage
arms_recorded /tmp/cl.coverage 1
echo "reset while translating: arm0 recorded again, arm1 gone"

# none: the data stays readable, nothing new is recorded.
set_client none
kdbt_on
cov branch 8
entry_work
kdbt_off
cp /tmp/cl.coverage /tmp/cl.before-none
snap coverage
echo "header under none: $(head -1 /tmp/cl.coverage)"
arms_recorded /tmp/cl.coverage 1
diff /tmp/cl.before-none /tmp/cl.coverage | grep '^[-+]0x' | head -5 | grep . && fail "ranges changed under client none"
expect_eq "$(cov_calls arm3)" 1 "native counter arm3"
echo "none: data kept, $(hdr /tmp/cl.coverage ranges) ranges, nothing new"
rmmod kdbt_cov || fail "rmmod kdbt_cov failed"
kdbt_unload
