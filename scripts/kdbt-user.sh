#!/usr/bin/env bash
# Builds kdbt-user and runs `kdbt-user SUBCOMMAND --dir $KDBT_BUILD/user-check ARGS...`
# (shared by user-check.sh and bench-busybox.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

[ $# -ge 1 ] || die "usage: kdbt-user.sh check|bench [ARGS...]"
[ -x /bin/busybox ] || die "/bin/busybox is missing: install the Debian package busybox-static (make setup)"
cd "$KDBT_ROOT"
cargo build --quiet --release -p kdbt-host --bin kdbt-user || die "building kdbt-user failed"
cmd="$1"
shift
exec "$KDBT_ROOT/target/release/kdbt-user" "$cmd" --dir "${KDBT_BUILD:-$KDBT_ROOT/build}/user-check" "$@"
