#!/usr/bin/env bash
# Compiles the guest's C test and benchmark programs (tests/vm/progs/*.c,
# tests/bench/*.c) as static binaries into $KDBT_BUILD/guest-bin, which the
# initramfs installs as /kdbt/bin.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
out="$KDBT_BUILD/guest-bin"
mkdir -p "$out"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "static libc missing: install the Debian package libc6-dev (make setup)"
for src in "$KDBT_ROOT"/tests/vm/progs/*.c "$KDBT_ROOT"/tests/bench/*.c; do
    [ -e "$src" ] || continue
    bin="$out/$(basename "$src" .c)"
    if [ ! -e "$bin" ] || [ "$src" -nt "$bin" ]; then
        gcc -static -O2 -Wall -Werror -o "$bin" "$src" || die "compiling $src failed"
    fi
done
echo "$out"
