#!/bin/sh
# KTAP runner: every tests/vm/t-*.sh is one test case. A case passes when it
# exits 0, is skipped when it exits 4; its output becomes KTAP diagnostics.
# kdbt_test.only=NAME[,NAME...] on the kernel command line runs only those
# cases (names without t- and .sh), in their usual order; a name that
# matches no case is reported as a failed case of that name.
cd /kdbt/tests
only=
for arg in $(cat /proc/cmdline); do
    case "$arg" in kdbt_test.only=*) only="${arg#kdbt_test.only=}" ;; esac
done
selected=
missing=
if [ -n "$only" ]; then
    for want in $(echo "$only" | tr ',' ' '); do
        [ -f "t-$want.sh" ] || missing="$missing $want"
    done
    for t in t-*.sh; do
        name="${t#t-}"; name="${name%.sh}"
        case ",$only," in *",$name,"*) selected="$selected $t" ;; esac
    done
else
    selected="$(echo t-*.sh)"
fi
set -- $selected
# Flip the kernel's once-only TCP static key now, in one process, rather than
# in a test's concurrent socket workload (docs/testing.md, "Known flake").
/kdbt/bin/sockets warm || echo "# runner: TCP warm-up failed"
# Likewise the scheduler's perf static keys, which every test's perf events
# (and the kernel selftests' ptrace watchpoints) would otherwise flip while
# other vCPUs run the scheduler: held on for the whole run.
/kdbt/bin/perfhold > /tmp/perfhold 2>&1 &
for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/perfhold ] && break; usleep 100000; done
grep -q '^held' /tmp/perfhold || echo "# runner: perf key hold failed: $(cat /tmp/perfhold)"
usleep 200000
# The CPUs online at boot: only those are put back online after a case.
boot_online=
for c in /sys/devices/system/cpu/cpu[0-9]*/online; do
    [ -f "$c" ] && [ "$(cat "$c")" = 1 ] && boot_online="$boot_online $c"
done
echo "TAP version 13"
echo "1..$(( $# + $(echo $missing | wc -w) ))"
n=0
for t in "$@"; do
    n=$((n + 1))
    name="${t#t-}"; name="${name%.sh}"
    start=$(cut -d' ' -f1 /proc/uptime)
    # Diagnostics go to the console as they come: a case that kills the
    # kernel still shows how far it got (a read loop, not sed, which holds
    # its output back in a buffer).
    { sh "$t" 2>&1; echo $? > /tmp/rc.$n; } | while IFS= read -r l || [ -n "$l" ]; do echo "# $l"; done
    rc=$(cat /tmp/rc.$n)
    # Whatever a failed case left behind must not fail the next ones.
    for c in $boot_online; do
        [ "$(cat "$c")" != 1 ] && { echo "# runner: $c was 0 after $name"; echo 1 > "$c"; }
    done
    touch /tmp/stop-load # ends a leftover start_load loop (lib.sh)
    if [ -d /sys/module/kdbt ]; then
        echo "# runner: kdbt still loaded after $name: disabling, unloading"
        echo 0 > /sys/kernel/kdbt/enabled; rmmod kdbt
    fi
    # Test modules (tests/vm/modules: kdbt_edge, kdbt_reuse_a, ...).
    for m in /sys/module/kdbt_*; do
        [ -d "$m" ] && { echo "# runner: unloading ${m##*/}"; rmmod "${m##*/}"; }
    done
    t=/sys/kernel/tracing
    [ -f $t/current_tracer ] && [ "$(cat $t/current_tracer)" != nop ] &&
        { echo "# runner: tracer $(cat $t/current_tracer) left on after $name"; echo nop > $t/current_tracer; }
    echo "# $name took $(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $start }") s"
    case $rc in
        0) echo "ok $n $name" ;;
        4) echo "ok $n $name # SKIP" ;;
        *) echo "not ok $n $name # exit $rc" ;;
    esac
done
for name in $missing; do
    n=$((n + 1))
    echo "# no test case t-$name.sh"
    echo "not ok $n $name # no such test"
done
