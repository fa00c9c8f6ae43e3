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
# Writing $2 to file $1 fails with EINVAL and leaves what it reads unchanged.
bad_write() {
    before=$(cat "$1" 2>/dev/null)
    err=$(sh -c "echo '$2' > $1" 2>&1) && fail "writing '$2' to $1 succeeded"
    echo "$err" | grep -q 'Invalid argument' || fail "writing '$2' to $1: '$err', want Invalid argument"
    [ "$(cat "$1" 2>/dev/null)" = "$before" ] || fail "$1 changed after a bad write"
}
# A fork+exec load that translates a lot, until stop_load. Sets $load_pid.
# Its output goes nowhere: it must not hold the runner's pipe open, and a
# case that fails while it runs stops it on exit. `start_load all`: one such
# loop pinned to each online CPU ($load_pid lists them).
start_load() {
    rm -f /tmp/stop-load
    load_pid=
    for c in $([ "${1:-}" = all ] && online_cpus || echo any); do
        if [ "$c" = any ]; then
            ( while [ ! -e /tmp/stop-load ]; do /bin/true; echo x | cat > /dev/null; done ) >/dev/null 2>&1 </dev/null &
        else
            taskset -c "$c" sh -c 'while [ ! -e /tmp/stop-load ]; do /bin/true; echo x | cat > /dev/null; done' >/dev/null 2>&1 </dev/null &
        fi
        load_pid="$load_pid $!"
    done
    trap 'touch /tmp/stop-load' EXIT
}
stop_load() { touch /tmp/stop-load; wait $load_pid; rm -f /tmp/stop-load; trap - EXIT; }
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
# A kdbt statistic (stats/NAME, e.g. cpu1/invalidations), or "n/a" when the
# loaded kdbt has no such file.
kdbt_stat() { cat "/sys/kernel/kdbt/stats/$1" 2>/dev/null || echo n/a; }
# The code-cache consistency counters, total and per online CPU, one line.
inval_stats() {
    [ -f /sys/kernel/kdbt/stats/invalidations ] || { echo "invalidations n/a, blocks_invalidated n/a"; return; }
    per_cpu=
    for c in $(online_cpus); do
        per_cpu="$per_cpu cpu$c $(kdbt_stat cpu$c/invalidations)/$(kdbt_stat cpu$c/blocks_invalidated)"
    done
    echo "invalidations $(kdbt_stat invalidations), blocks_invalidated $(kdbt_stat blocks_invalidated) (per CPU invalidations/blocks:$per_cpu)"
}
