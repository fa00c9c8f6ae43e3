#!/usr/bin/env bash
# Installs everything kdbt needs from Debian and crates.io. Idempotent and fast
# when everything is present. Each failing step names the package or command.
set -euo pipefail

RUST_WEB_VERSION="${KDBT_RUST_WEB_VERSION:-1.85.0+dfsg3-1~deb12u3}"
BINDGEN_VERSION="0.69.5"

PKGS=(linux-source-6.12 clang lld llvm libclang-dev qemu-system-x86 busybox-static
      flex bison bc libelf-dev libssl-dev cpio kmod xz-utils binutils make gcc
      python3 file libc6-dev lcov python3-matplotlib)
RUST_PKGS=(rustc-web rust-web-src libstd-rust-web-dev)

die() { echo "setup: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root to install: $*"
}

updated=0
apt_update_once() {
    if [ "$updated" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || die "'apt-get update' failed"
        updated=1
    fi
}

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root "${missing[@]}"
    apt_update_once
    echo "setup: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}"
fi

rust_missing=()
for p in "${RUST_PKGS[@]}"; do
    v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
    [ "$v" = "$RUST_WEB_VERSION" ] || rust_missing+=("$p=$RUST_WEB_VERSION")
done
if [ ${#rust_missing[@]} -gt 0 ]; then
    need_root "${rust_missing[@]}"
    apt_update_once
    echo "setup: installing ${rust_missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades --no-install-recommends \
        "${rust_missing[@]}" >/dev/null || die "apt-get install failed for: ${rust_missing[*]}"
fi

[ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing after installing rustc-web"
[ -d /usr/lib/rustlib/src/rust/library/alloc ] || die "rust-web-src did not provide library/alloc"

if ! { command -v bindgen >/dev/null && bindgen --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; }; then
    echo "setup: cargo install bindgen-cli $BINDGEN_VERSION"
    cargo install --locked -q bindgen-cli --version "$BINDGEN_VERSION" >/dev/null 2>&1 \
        || die "'cargo install --locked bindgen-cli --version $BINDGEN_VERSION' failed"
fi

[ -f /usr/src/linux-source-6.12.tar.xz ] || die "linux-source-6.12 did not provide /usr/src/linux-source-6.12.tar.xz"
[ -x /bin/busybox ] || die "busybox-static did not provide /bin/busybox"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86 did not provide qemu-system-x86_64"
