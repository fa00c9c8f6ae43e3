# Shared settings for kdbt's scripts. Sourced, never run.
die() { echo "${0##*/}: $*" >&2; exit 1; }

KDBT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KDBT_CACHE="${KDBT_CACHE:-$HOME/.cache/kdbt}"
KDBT_RUSTC="${KDBT_RUSTC:-/usr/bin/rustc}"
KERNEL_TARBALL="${KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"
KCONFIG_FRAGMENT="$KDBT_ROOT/scripts/kconfig/kdbt.config"
export PATH="$HOME/.cargo/bin:$PATH"

# The kernel tree's cache key: source package version, fragment and rustc.
kernel_tree() {
    local ver key
    ver="$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null)" || die "linux-source-6.12 is not installed (run make setup)"
    key="$( { cat "$KCONFIG_FRAGMENT"; "$KDBT_RUSTC" --version; } | sha256sum | cut -c1-12)"
    echo "$KDBT_CACHE/linux-$ver-$key"
}
KDBT_BUILD="${KDBT_BUILD:-$KDBT_ROOT/build}"
