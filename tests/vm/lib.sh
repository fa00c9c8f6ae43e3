# Helpers for the VM tests. Sourced.
fail() { echo "FAIL: $*"; exit 1; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
# kdbt_test.cache_kb=N on the kernel command line: every test runs with that
# code-cache size (scripts/vm-test.sh's smallest-cache pass).
kdbt_load() {
    insmod /kdbt/kdbt.ko "$@" || fail "insmod failed"
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
            kdbt_test.cache_kb=*) echo "${arg#*=}" > /sys/kernel/kdbt/cache_kb || fail "cache_kb ${arg#*=} refused" ;;
        esac
    done
}
kdbt_unload() { rmmod kdbt || fail "rmmod failed"; }
# A fork+exec load that translates a lot, until stop_load. Sets $load_pid.
# Its output goes nowhere: it must not hold the runner's pipe open, and a
# case that fails while it runs stops it on exit.
start_load() {
    rm -f /tmp/stop-load
    ( while [ ! -e /tmp/stop-load ]; do /bin/true; echo x | cat > /dev/null; done ) >/dev/null 2>&1 </dev/null &
    load_pid=$!
    trap 'touch /tmp/stop-load' EXIT
}
stop_load() { touch /tmp/stop-load; wait "$load_pid"; rm -f /tmp/stop-load; trap - EXIT; }
# The online CPU numbers, one per line.
online_cpus() {
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
        [ "$(cat "$c/online" 2>/dev/null || echo 1)" = 1 ] && echo "${c##*/cpu}"
    done | sort -n
}
# A value of kdbt_test.NAME=VALUE on the kernel command line, or $2.
cmdline_opt() {
    for arg in $(cat /proc/cmdline); do
        case "$arg" in "kdbt_test.$1="*) echo "${arg#*=}"; return ;; esac
    done
    echo "$2"
}
