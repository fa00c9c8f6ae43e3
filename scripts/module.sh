#!/usr/bin/env bash
# Builds kdbt.ko against the cached test kernel. Prints the .ko path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

tree="$("$here/kernel.sh")"
deps="$KDBT_BUILD/deps"
python3 "$here/rust-deps.py" "$tree" "$deps" >/dev/null
make -s -C "$tree" M="$KDBT_ROOT" RUSTC="$KDBT_RUSTC" BINDGEN=bindgen KDBT_DEPS="$deps" modules >&2 \
    || die "module build failed"
echo "$KDBT_ROOT/kdbt.ko"
