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
