#!/bin/sh
# The kernel's own x86 selftests (tools/testing/selftests/x86 of the test
# kernel's source, 64-bit, built by scripts/guest-selftests.sh, which says
# which programs and why the others are left out): each one natively, then
# with every CPU under translation. Translated, each must exit with the same
# status as natively, print no more [FAIL] lines, and one that passes natively
# (exit 0, no [FAIL]) must pass. One line per program: exit status, counts of
# [OK]/[FAIL]/[SKIP] lines (and of the KTAP ok/not ok/# SKIP lines of the
# kselftest-harness ones), seconds; native, then translated.
. ./lib.sh
D=/kdbt/selftests/x86
# Seconds a program may take (busybox timeout kills it with SIGTERM: exit
# 143): a hang detector, not a speed check. The slowest, ldt_gdt on the
# distro kernel, takes 1.5 s natively, 5 s translated; the first translated
# one (cold caches) 1-2 s, but 40 s once on a host loaded 3.5-fold.
LIMIT=$(cmdline_opt selftest_limit 300)
now() { cut -d' ' -f1 /proc/uptime; }
# run NAME MODE: runs $D/NAME, its output in /tmp/st.NAME.MODE; its summary
# "exit N ok/fail/skip" in /tmp/st.NAME.MODE.res, its seconds in .secs.
run() {
    out="/tmp/st.$1.$2"
    t0=$(now)
    timeout "$LIMIT" "$D/$1" > "$out" 2>&1 < /dev/null
    rc=$?
    awk "BEGIN { printf \"%.1f\n\", $(now) - $t0 }" > "$out.secs"
    ok=$(grep -E '^(\[OK\]|ok [0-9]+ )' "$out" | grep -vc '# SKIP')
    bad=$(grep -cE '^(\[FAIL\]|not ok [0-9]+)' "$out")
    skip=$(grep -cE '^(\[SKIP\]|ok [0-9]+ .*# SKIP)' "$out")
    echo "exit $rc $ok/$bad/$skip" > "$out.res"
}
status() { cut -d' ' -f2 "$1.res"; }
fails() { cut -d' ' -f3 "$1.res" | cut -d/ -f2; }
passes() { [ "$(status "$1")" = 0 ] && [ "$(fails "$1")" = 0 ]; }
# The kernel's one-line reports of user faults ("traps: ... general
# protection fault", "segfault at"), which these programs provoke, would
# read as kernel trouble to the host's judge: off while they run.
trace=$(cat /proc/sys/debug/exception-trace)
echo 0 > /proc/sys/debug/exception-trace || fail "cannot turn off debug.exception-trace"
trap 'echo "$trace" > /proc/sys/debug/exception-trace' EXIT
progs=$(cd $D && ls)
[ -n "$progs" ] || fail "no selftests in $D"
for p in $progs; do run "$p" native; done
kdbt_load
echo 1 > /sys/kernel/kdbt/enabled || fail "enable failed"
for p in $progs; do run "$p" translated; done
echo 0 > /sys/kernel/kdbt/enabled || fail "disable failed"
echo "blocks $(kdbt_stat blocks_translated), dispatcher entries $(kdbt_stat dispatcher_entries), rollbacks $(kdbt_stat rollbacks), pc_rewrites $(kdbt_stat pc_rewrites)"
echo "entries by vector: $(tr '\n' ' ' < /sys/kernel/kdbt/stats/entries_by_vector)"
blocks=$(kdbt_stat blocks_translated)
kdbt_unload
[ "$blocks" -gt 1000 ] || fail "only $blocks blocks translated"
echo "selftest: native exit, [OK]/[FAIL]/[SKIP], s | translated exit, [OK]/[FAIL]/[SKIP], s"
n=0; npass=0; ndiff=0
for p in $progs; do
    nat=/tmp/st.$p.native; xl=/tmp/st.$p.translated
    n=$((n + 1))
    passes "$nat" && npass=$((npass + 1))
    verdict=same
    if [ "$(status "$nat")" != "$(status "$xl")" ] || [ "$(fails "$xl")" -gt "$(fails "$nat")" ] ||
        { passes "$nat" && ! passes "$xl"; }; then
        verdict=DIFFERS
    fi
    [ $verdict = same ] || ndiff=$((ndiff + 1))
    echo "$p: $(cat $nat.res) $(cat $nat.secs) | $(cat $xl.res) $(cat $xl.secs): $verdict"
    if [ "$verdict" = DIFFERS ]; then
        echo "  native [FAIL] lines:"; grep -E '^(\[FAIL\]|not ok [0-9]+)' "$nat" | head -10
        echo "  translated [FAIL] lines:"; grep -E '^(\[FAIL\]|not ok [0-9]+)' "$xl" | head -10
        echo "  translated output ends:"; tail -3 "$xl"
    fi
done
echo "selftests: $n run, $npass pass natively, $ndiff differ translated"
[ $ndiff -eq 0 ] || fail "$ndiff selftests differ under translation"
