#!/usr/bin/env bash
# Builds the guest's test kernel modules (tests/vm/modules/<name>/, C with an
# out-of-tree Kbuild) against the cached test kernel, each in a copy under
# $KDBT_BUILD/test-modules/<name> (the source tree stays clean). Prints the
# directory holding the .ko files, which the initramfs installs as
# /kdbt/modules.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
tree="$("$here/kernel.sh")"
out="$KDBT_BUILD/test-modules"
mkdir -p "$out/ko"
for src in "$KDBT_ROOT"/tests/vm/modules/*/; do
    [ -f "$src/Kbuild" ] || continue
    name="$(basename "$src")"
    dir="$out/$name"
    mkdir -p "$dir"
    # Copy only what changed, so make's timestamps stay meaningful.
    cp -ru "$src". "$dir/"
    make -s -C "$tree" M="$dir" modules >&2 || die "building test module $name failed"
    cp "$dir"/*.ko "$out/ko/"
done
# kdbt_edge: kdbt_edge_fn must end at the last byte of its page-sized
# section, and that section must be the module's last executable one.
edge="$out/ko/kdbt_edge.ko"
if [ -f "$edge" ]; then
    sections="$(readelf -SW "$edge" | sed -n 's/^ *\[ *[0-9]*\] //p')"
    size="$(echo "$sections" | awk '$1 == ".text.kdbt_edge" { print $5 }')"
    last_x="$(echo "$sections" | awk '$7 ~ /X/ { n = $1 } END { print n }')"
    read -r value len < <(readelf -sW "$edge" | awk '$8 == "kdbt_edge_fn" { print $2, $3 }')
    end=$(( 0x${value:-0} + ${len:-0} ))
    [ "$size" = 001000 ] && [ "$end" = 4096 ] && [ "$last_x" = .text.kdbt_edge ] \
        || die "kdbt_edge.ko: .text.kdbt_edge size 0x${size:-?}, kdbt_edge_fn ends at $end, last executable section ${last_x:-?}; want 0x1000, 4096, .text.kdbt_edge (fix EDGE_FN_SIZE in edge_fn.S)"
fi
# kdbt_reuse_a/b: one source, two variants that must have the same layout
# (t-module_reuse loads B where A was): every allocated section the same size.
layout() { readelf -SW "$1" | sed -n 's/^ *\[ *[0-9]*\] //p' | awk '$7 ~ /A/ { print $1, $5 }'; }
if [ -f "$out/ko/kdbt_reuse_a.ko" ]; then
    diff <(layout "$out/ko/kdbt_reuse_a.ko") <(layout "$out/ko/kdbt_reuse_b.ko") >&2 \
        || die "kdbt_reuse_a.ko and kdbt_reuse_b.ko differ in section sizes (tests/vm/modules/reuse/reuse.h: keep both variants' constants the same width)"
fi
echo "$out/ko"
