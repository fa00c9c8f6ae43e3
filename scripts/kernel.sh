#!/usr/bin/env bash
# Builds the test kernel into a cache outside the git tree, keyed by kernel
# source version, config fragment and rustc version. Prints the tree's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

tree="$(kernel_tree)"
if [ -f "$tree/.kdbt-built" ]; then
    echo "$tree"
    exit 0
fi
mkdir -p "$KDBT_CACHE"
log="$KDBT_CACHE/kernel-build.log"
echo "kernel: building $tree (log: $log)" >&2
rm -rf "$tree" "$tree.tmp"
mkdir -p "$tree.tmp"
tar -xf "$KERNEL_TARBALL" -C "$tree.tmp" --strip-components=1 || die "extracting $KERNEL_TARBALL failed"
mv "$tree.tmp" "$tree"
cd "$tree"
kmake() { make -s RUSTC="$KDBT_RUSTC" BINDGEN=bindgen "$@"; }
{
    kmake tinyconfig
    scripts/kconfig/merge_config.sh -m .config "$KCONFIG_FRAGMENT"
    kmake olddefconfig
} >>"$log" 2>&1 || die "kernel configuration failed; see $log"
# merge_config only warns when a symbol cannot be set; refuse a config that lost one.
bad=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    sym="${line%%=*}"; val="${line#*=}"
    if [ "$val" = n ]; then
        grep -q "^$sym=" .config && { echo "kernel: $sym should be unset" >&2; bad=1; }
    else
        grep -qx "$line" .config || { echo "kernel: $line did not stick" >&2; bad=1; }
    fi
done <"$KCONFIG_FRAGMENT"
[ "$bad" = 0 ] || die "config fragment not applied; see $tree/.config"
kmake -j"$(nproc)" vmlinux bzImage modules >>"$log" 2>&1 || { tail -30 "$log" >&2; die "kernel build failed; see $log"; }
touch .kdbt-built
echo "$tree"
