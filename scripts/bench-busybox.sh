#!/usr/bin/env bash
# The busybox workload of make user-check, timed: translated / native wall-time ratio under
# each call/ret policy (Transparent, Fast), measured side by side (interleaved) in one run.
# Extra arguments go to `kdbt-user bench` (e.g. --repeat 5).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

[ -x /bin/busybox ] || die "/bin/busybox is missing: install the Debian package busybox-static (make setup)"
cd "$KDBT_ROOT"
cargo build --quiet --release -p kdbt-host --bin kdbt-user || die "building kdbt-user failed"
exec "$KDBT_ROOT/target/release/kdbt-user" bench --dir "${KDBT_BUILD:-$KDBT_ROOT/build}/user-check" "$@"
