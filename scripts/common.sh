# Shared settings for kdbt's scripts. Sourced, never run.
die() { echo "${0##*/}: $*" >&2; exit 1; }

KDBT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KDBT_CACHE="${KDBT_CACHE:-$HOME/.cache/kdbt}"
KDBT_RUSTC="${KDBT_RUSTC:-/usr/bin/rustc}"
KERNEL_TARBALL="${KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"
KCONFIG_FRAGMENT="$KDBT_ROOT/scripts/kconfig/kdbt.config"
# Which test kernel: "small" (tinyconfig + kdbt.config, fast to build) or
# "distro" (Debian's own configuration + distro.config).
KDBT_KERNEL="${KDBT_KERNEL:-small}"
DISTRO_CHANGES="$KDBT_ROOT/scripts/kconfig/distro.config"
export PATH="$HOME/.cargo/bin:$PATH"

# Debian's headers package whose .config is the distro kernel's base, for the
# installed linux-source-6.12 version (6.12.117-1~deb12u1 -> 6.12.117+deb12).
distro_headers() {
    local ver
    ver="$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null)" || die "linux-source-6.12 is not installed (run make setup)"
    echo "linux-headers-${ver%%-*}+deb12-amd64=$ver"
}

# The kernel tree's cache key: source package version, configuration input
# (fragment, or Debian package + changes) and rustc.
kernel_tree() {
    local ver key
    ver="$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null)" || die "linux-source-6.12 is not installed (run make setup)"
    case "$KDBT_KERNEL" in
        small) key="$( { cat "$KCONFIG_FRAGMENT"; "$KDBT_RUSTC" --version; } | sha256sum | cut -c1-12)"
               echo "$KDBT_CACHE/linux-$ver-$key" ;;
        distro) key="$( { distro_headers; cat "$DISTRO_CHANGES"; "$KDBT_RUSTC" --version; } | sha256sum | cut -c1-12)"
                echo "$KDBT_CACHE/linux-distro-$ver-$key" ;;
        *) die "KDBT_KERNEL must be small or distro, got '$KDBT_KERNEL'" ;;
    esac
}
# Build output; the distro kernel's has its own (modules, initramfs, logs).
if [ "$KDBT_KERNEL" = distro ]; then
    KDBT_BUILD="${KDBT_BUILD:-$KDBT_ROOT/build/distro}"
else
    KDBT_BUILD="${KDBT_BUILD:-$KDBT_ROOT/build}"
fi

# CI's time limit: .ci/run sets KDBT_DEADLINE (seconds since the epoch) and the
# test scripts start no VM pass or kernel build that would not end before it
# (docs/testing.md, "Time budget"). Without it nothing is skipped.
budget_left() {
    if [ -n "${KDBT_DEADLINE:-}" ]; then echo $(( KDBT_DEADLINE - $(date +%s) )); else echo 999999; fi
}
# How slow this host runs the VM suite against the machine whose times the
# scripts carry as estimates, in percent (100: as fast; never below): the
# largest ratio a whole VM pass showed so far in this build tree.
SLOWNESS_FILE="$KDBT_ROOT/build/host-slowness"
host_slowness() {
    local s
    s="$(cat "$SLOWNESS_FILE" 2>/dev/null || echo 100)"
    case "$s" in ''|*[!0-9]*) s=100 ;; esac
    [ "$s" -lt 100 ] && s=100
    echo "$s"
}
# Seconds a whole VM pass ($2) on kernel $1 took on the reference machine
# (docs/testing.md, "Time budget"): with the host's slowness, what it is
# expected to take.
estimate() {
    case "$1/$2" in
        small/default) echo 1000 ;; small/mincache) echo 400 ;; small/smp1) echo 60 ;;
        small/smp4) echo 150 ;; small/smp8) echo 230 ;; small/smp64max2) echo 170 ;;
        small/smp2max1) echo 70 ;; distro/all4) echo 1080 ;; distro/rethunk) echo 70 ;;
        distro/intel) echo 65 ;; distro/intelpti) echo 35 ;; *) echo 300 ;;
    esac
}
# Records that something estimated at $1 s took $2 s.
note_slowness() {
    local ratio=$(( $2 * 100 / ($1 > 0 ? $1 : 1) ))
    mkdir -p "${SLOWNESS_FILE%/*}"
    [ "$ratio" -gt "$(host_slowness)" ] && echo "$ratio" > "$SLOWNESS_FILE"
    return 0
}
