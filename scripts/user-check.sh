#!/usr/bin/env bash
# make user-check: runs Debian's static busybox under kdbt's translation in user space and
# compares every applet's output byte for byte with a native run. Extra arguments go to
# `kdbt-user check` (for example --loader to validate the ELF loader without translation).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

[ -x /bin/busybox ] || die "/bin/busybox is missing: install the Debian package busybox-static (make setup)"
cd "$KDBT_ROOT"
cargo build --quiet --release -p kdbt-host --bin kdbt-user || die "building kdbt-user failed"
exec "$KDBT_ROOT/target/release/kdbt-user" check --dir "${KDBT_BUILD:-$KDBT_ROOT/build}/user-check" "$@"
