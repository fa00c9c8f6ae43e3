# Helpers for the VM tests. Sourced.
fail() { echo "FAIL: $*"; exit 1; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
kdbt_load() { insmod /kdbt/kdbt.ko "$@" || fail "insmod failed"; }
kdbt_unload() { rmmod kdbt || fail "rmmod failed"; }
