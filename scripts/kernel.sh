#!/usr/bin/env bash
# Builds the test kernel ($KDBT_KERNEL: small or distro, see common.sh) into a
# cache outside the git tree, keyed by kernel source version, configuration
# input and rustc version. Prints the tree's path.
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
if [ "$KDBT_KERNEL" = distro ]; then
    fragment="$DISTRO_CHANGES"
    debs="$KDBT_CACHE/debs"
    mkdir -p "$debs"
    pkg="$(distro_headers)"
    deb="$(ls "$debs"/"${pkg%%=*}"_*.deb 2>/dev/null | head -1 || true)"
    if [ -z "$deb" ]; then
        (cd "$debs" && apt-get download -q "$pkg" >>"$log" 2>&1) || die "apt-get download $pkg failed; see $log"
        deb="$(ls "$debs"/"${pkg%%=*}"_*.deb | head -1)"
    fi
    dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards '*/.config' > .config || die "no .config in $deb"
    {
        scripts/kconfig/merge_config.sh -m .config "$fragment"
        kmake olddefconfig
        # Loadable modules the tests do not use: off (the build budget).
        sed -i 's/^\(CONFIG_[A-Za-z0-9_]*\)=m$/# \1 is not set/' .config
        kmake olddefconfig
    } >>"$log" 2>&1 || die "kernel configuration failed; see $log"
else
    fragment="$KCONFIG_FRAGMENT"
    {
        kmake tinyconfig
        scripts/kconfig/merge_config.sh -m .config "$fragment"
        kmake olddefconfig
    } >>"$log" 2>&1 || die "kernel configuration failed; see $log"
fi
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
done <"$fragment"
[ "$bad" = 0 ] || die "config fragment not applied; see $tree/.config"
kmake -j"$(nproc)" vmlinux bzImage modules >>"$log" 2>&1 || { tail -30 "$log" >&2; die "kernel build failed; see $log"; }
touch .kdbt-built
echo "$tree"
