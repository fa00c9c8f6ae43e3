#!/usr/bin/env bash
# Builds kdbt.ko against the cached test kernel ($KDBT_KERNEL), in a copy of
# the module's sources under $KDBT_BUILD/module (one per kernel; the source
# tree stays clean). Prints the .ko path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

tree="$("$here/kernel.sh")"
deps="$KDBT_BUILD/deps"
python3 "$here/rust-deps.py" "$tree" "$deps" >/dev/null
dir="$KDBT_BUILD/module"
mkdir -p "$dir/src"
# Copy only what changed, so make's timestamps stay meaningful.
cp -u "$KDBT_ROOT/Kbuild" "$dir/"
cp -ru "$KDBT_ROOT/src/module" "$dir/src/"
make -s -C "$tree" M="$dir" RUSTC="$KDBT_RUSTC" BINDGEN=bindgen KDBT_DEPS="$deps" modules >&2 \
    || die "module build failed"
echo "$dir/kdbt.ko"
