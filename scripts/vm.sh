#!/usr/bin/env bash
# Boots the test kernel in QEMU (TCG, serial console) with the initramfs, in
# the given guest mode, and keeps the whole console log.
# usage: vm.sh MODE LOG [TIMEOUT_SECONDS] [extra qemu args...]
# KDBT_CPU: QEMU's -cpu model (default max; max,-cx16 for the distro kernel,
# see docs/distro.md, "QEMU 7.2 and cmpxchg16b").
# KDBT_SMP: QEMU's -smp value (default 2; e.g. 8, or 2,maxcpus=64 for CPUs
# that can be hot-added); KDBT_MEM: -m (default 1G); KDBT_APPEND: more
# kernel command line.
# Exit status: QEMU's, or 124 on timeout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
mode="$1"; log="$2"; limit="${3:-600}"; shift $(( $# >= 3 ? 3 : $# ))
tree="$("$here/kernel.sh")"
ko="$("$here/module.sh")"
mkdir -p "$KDBT_BUILD/vm" "$(dirname "$log")"
initrd="$KDBT_BUILD/vm/initramfs.cpio"
"$here/initramfs.sh" "$ko" "$initrd"
if [ "$KDBT_KERNEL" = distro ]; then cpu="${KDBT_CPU:-max,-cx16}"; else cpu="${KDBT_CPU:-max}"; fi
# TCG only: this machine's /dev/kvm cannot boot an ordinary guest (see
# docs/vm.md), and TCG is what the timings and instruction counts assume.
set +e
timeout --foreground -k 5 "$limit" qemu-system-x86_64 -accel tcg -cpu "$cpu" -smp "${KDBT_SMP:-2}" -m "${KDBT_MEM:-1G}" \
    -nographic -no-reboot -serial mon:stdio -display none \
    -kernel "$tree/arch/x86/boot/bzImage" -initrd "$initrd" \
    -append "console=ttyS0 rdinit=/init panic=-1 oops=panic kdbt.mode=$mode ${KDBT_APPEND:-}" \
    "$@" <"$([ "$mode" = shell ] && echo /dev/stdin || echo /dev/null)" 2>&1 | tee "$log" | { if [ -n "${KDBT_QUIET:-}" ]; then cat >/dev/null; else cat; fi; }
rc=${PIPESTATUS[0]}
set -e
echo "console log: $log" >&2
exit "$rc"
